"""Weight space: averages and merges of weights across tasks (EMA, WiSE-FT / interpolation, task arithmetic,
TIES, DARE, MagMax, ...). The base is :class:`~clight.callbacks.weight_space.base.WeightSpaceCallback`."""

from clight.callbacks.weight_space.base import WeightSpaceCallback
from clight.callbacks.weight_space.ema import EMAWeights
from clight.callbacks.weight_space.interpolation import WeightInterpolation
from clight.callbacks.weight_space.merging import TaskVectorMerge

__all__ = ["EMAWeights", "TaskVectorMerge", "WeightInterpolation", "WeightSpaceCallback"]
