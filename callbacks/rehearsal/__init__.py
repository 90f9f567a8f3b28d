"""Rehearsal: keep examples of past tasks and train on them again (Replay, DER/DER++, A-GEM), or rehearse the
model's own answers (Selective Self-Rehearsal).

The base :class:`~clight.callbacks.rehearsal.base.MemoryCallback` fills an
:class:`~clight.callbacks.rehearsal.memory.ExampleMemory` at every task end."""

from clight.callbacks.rehearsal.agem import AGEM
from clight.callbacks.rehearsal.base import MemoryCallback
from clight.callbacks.rehearsal.der import DarkExperienceReplay
from clight.callbacks.rehearsal.memory import ExampleMemory
from clight.callbacks.rehearsal.replay import Replay
from clight.callbacks.rehearsal.self_rehearsal import SelectiveSelfRehearsal

__all__ = ["AGEM", "DarkExperienceReplay", "ExampleMemory", "MemoryCallback", "Replay", "SelectiveSelfRehearsal"]
