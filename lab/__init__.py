"""lab: an architecture ablation lab for looped layers and width profiles along depth."""

__version__ = "0.1.0"
