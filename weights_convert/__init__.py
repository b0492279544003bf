"""Checkpoint conversion between the diffusers layout and MindSpore checkpoints."""
from .convert import convert, detect

__all__ = ["convert", "detect"]
