"""Continual-learning techniques as Lightning callbacks (``clight.callbacks``)."""

from clight.callback import ContinualCallback
from clight.callbacks.agem import AGEM
from clight.callbacks.der import DarkExperienceReplay
from clight.callbacks.distillation import Distillation, FeatureDistillation
from clight.callbacks.ewc import EWC
from clight.callbacks.freezing import FreezeParameters
from clight.callbacks.gradient_mask import GradientMask
from clight.callbacks.half_finetuning import HalfFineTuning
from clight.callbacks.l2_anchor import L2Anchor
from clight.callbacks.mas import MAS
from clight.callbacks.memory import ExampleMemory
from clight.callbacks.regularization import QuadraticPenalty
from clight.callbacks.rehearsal import MemoryCallback
from clight.callbacks.replay import Replay
from clight.callbacks.si import SI

__all__ = [
    "AGEM", "ContinualCallback", "DarkExperienceReplay", "Distillation", "EWC", "ExampleMemory",
    "FeatureDistillation", "FreezeParameters", "GradientMask", "HalfFineTuning", "L2Anchor", "MAS",
    "MemoryCallback", "QuadraticPenalty", "Replay", "SI",
]
