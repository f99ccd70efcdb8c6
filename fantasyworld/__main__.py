import sys

from fantasyworld.cli import main

sys.exit(main())
