"""conadv-repro: a reproduction suite for Concurrent Adversarial Learning for Large-Batch Training."""

__version__ = "0.1.0"
