"""Tune-A-Video on MindSpore."""
__version__ = "0.1.0"
