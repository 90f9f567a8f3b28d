"""Continual-learning techniques as Lightning callbacks (``clight.callbacks``)."""

from clight.callback import ContinualCallback
from clight.callbacks.agem import AGEM
from clight.callbacks.chain_of_lora import ChainOfLoRA
from clight.callbacks.der import DarkExperienceReplay
from clight.callbacks.distillation import Distillation
from clight.callbacks.ema import EMAWeights
from clight.callbacks.ewc import EWC
from clight.callbacks.feature_distillation import FeatureDistillation
from clight.callbacks.freezing import FreezeParameters
from clight.callbacks.gradient_mask import GradientMask
from clight.callbacks.half_finetuning import HalfFineTuning
from clight.callbacks.interpolation import WeightInterpolation
from clight.callbacks.l2_anchor import L2Anchor
from clight.callbacks.lora import LoRACallback
from clight.callbacks.lora_per_task import LoRAPerTask
from clight.callbacks.mas import MAS
from clight.callbacks.memory import ExampleMemory
from clight.callbacks.merging import TaskVectorMerge
from clight.callbacks.orthogonal_lora import OrthogonalLoRA
from clight.callbacks.regularization import QuadraticPenalty
from clight.callbacks.rehearsal import MemoryCallback
from clight.callbacks.replay import Replay
from clight.callbacks.si import SI

__all__ = [
    "AGEM", "ContinualCallback", "DarkExperienceReplay", "Distillation", "EWC", "ExampleMemory",
    "FeatureDistillation", "L2Anchor", "MAS", "MemoryCallback", "QuadraticPenalty", "Replay", "SI",
    "EMAWeights", "TaskVectorMerge", "WeightInterpolation",
    "FreezeParameters", "GradientMask", "HalfFineTuning",
    "ChainOfLoRA", "LoRACallback", "LoRAPerTask", "OrthogonalLoRA",
]
