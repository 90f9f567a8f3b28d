"""Distillation from the previous task's model, on the outputs (LwF) or on hidden features. The base
:class:`~clight.callbacks.distillation.base.TeacherCallback` keeps the teacher snapshot."""

from clight.callbacks.distillation.base import TeacherCallback
from clight.callbacks.distillation.distillation import Distillation
from clight.callbacks.distillation.feature_distillation import FeatureDistillation

__all__ = ["Distillation", "FeatureDistillation", "TeacherCallback"]
