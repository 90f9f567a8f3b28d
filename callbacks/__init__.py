"""Continual-learning techniques as Lightning callbacks (``clight.callbacks``)."""

from clight.callback import ContinualCallback

__all__ = ["ContinualCallback"]
