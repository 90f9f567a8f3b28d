"""Weight regularization: a quadratic pull toward past weights, weighted by each weight's importance (EWC, online
EWC, MAS, SI, L2Anchor / L2-SP). The base is :class:`~clight.callbacks.regularization.base.QuadraticPenalty`."""

from clight.callbacks.regularization.base import QuadraticPenalty
from clight.callbacks.regularization.ewc import EWC
from clight.callbacks.regularization.l2_anchor import L2Anchor
from clight.callbacks.regularization.mas import MAS
from clight.callbacks.regularization.si import SI

__all__ = ["EWC", "L2Anchor", "MAS", "QuadraticPenalty", "SI"]
