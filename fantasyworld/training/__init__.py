"""Floor 5 (peer of :mod:`fantasyworld.inference`, neither imports the other): run config,
trainer, losses, process group and sharding, checkpoints, logging. May import floors 0-4.
"""
