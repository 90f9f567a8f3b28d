"""Continual-learning techniques as Lightning callbacks (``clight.callbacks``)."""

from clight.callback import ContinualCallback
from clight.callbacks.agem import AGEM
from clight.callbacks.der import DarkExperienceReplay
from clight.callbacks.memory import ExampleMemory
from clight.callbacks.rehearsal import MemoryCallback
from clight.callbacks.replay import Replay

__all__ = ["AGEM", "ContinualCallback", "DarkExperienceReplay", "ExampleMemory", "MemoryCallback", "Replay"]
