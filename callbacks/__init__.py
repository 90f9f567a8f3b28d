"""Continual-learning techniques as Lightning callbacks (``clight.callbacks``), one package per family.

The techniques are exported here; each family's bases are importable from the family
(``clight.callbacks.rehearsal.MemoryCallback``, ``clight.callbacks.regularization.QuadraticPenalty``, ...).
"""

from clight.callbacks.distillation import Distillation, FeatureDistillation
from clight.callbacks.lora import AdaLoRABudget, ChainOfLoRA, LoRAPerTask, OrthogonalLoRA
from clight.callbacks.masking import FreezeParameters, GradientMask, HalfFineTuning
from clight.callbacks.regularization import EWC, MAS, SI, L2Anchor
from clight.callbacks.rehearsal import AGEM, DarkExperienceReplay, Replay, SelectiveSelfRehearsal
from clight.callbacks.weight_space import EMAWeights, TaskVectorMerge, WeightInterpolation

__all__ = [
    # rehearsal
    "AGEM", "DarkExperienceReplay", "Replay", "SelectiveSelfRehearsal",
    # regularization
    "EWC", "L2Anchor", "MAS", "SI",
    # distillation
    "Distillation", "FeatureDistillation",
    # masking
    "FreezeParameters", "GradientMask", "HalfFineTuning",
    # lora
    "AdaLoRABudget", "ChainOfLoRA", "LoRAPerTask", "OrthogonalLoRA",
    # weight space
    "EMAWeights", "TaskVectorMerge", "WeightInterpolation",
]
