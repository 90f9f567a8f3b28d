"""Which parameters move: freezing by name or preset (BitFit, LN-tuning, lower layers), Half Fine-Tuning, and
gradient masks (magnitude, importance, sparse). Shared freezing bookkeeping: :mod:`clight.callbacks.masking.base`."""

from clight.callbacks.masking.freezing import FreezeParameters
from clight.callbacks.masking.gradient_mask import GradientMask
from clight.callbacks.masking.half_finetuning import HalfFineTuning

__all__ = ["FreezeParameters", "GradientMask", "HalfFineTuning"]
