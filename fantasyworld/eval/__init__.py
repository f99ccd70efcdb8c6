"""Floor 6: metrics, baselines, held-out split, evaluation and its report. May import floors 0-5."""
