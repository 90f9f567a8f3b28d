"""Task heads of :class:`~clight.module.ContinualModule`: one object per task type owns the forward pass, the
loss, the labels EWC samples and the evaluation metrics."""

from clight.heads.base import TaskHead
from clight.heads.causal_lm import CausalLMHead, TokenNLL
from clight.heads.classification import ClassificationHead, mean_pool
from clight.heads.instruction import METRICS_BY_KIND, InstructionHead

HEADS: dict[str, type[TaskHead]] = {"classification": ClassificationHead, "causal_lm": CausalLMHead,
                                    "instruction": InstructionHead}


def make_head(task: str, *, compile: bool = False) -> TaskHead:
    """The head of a task type (a key of :data:`HEADS`); ``compile`` selects a causal LM's compiled loss."""
    if task in ("causal_lm", "instruction"):
        return HEADS[task](compiled_loss=compile)
    return HEADS[task]()


__all__ = ["HEADS", "METRICS_BY_KIND", "InstructionHead", "make_head", "CausalLMHead", "ClassificationHead", "TaskHead", "TokenNLL", "mean_pool"]
