"""Task heads of :class:`~clight.module.ContinualModule`: one object per task type owns the forward pass, the
loss, the labels EWC samples and the evaluation metrics."""

from clight.heads.base import TaskHead
from clight.heads.causal_lm import CausalLMHead, TokenNLL
from clight.heads.classification import ClassificationHead, mean_pool

HEADS: dict[str, type[TaskHead]] = {"classification": ClassificationHead, "causal_lm": CausalLMHead}


def make_head(task: str, *, compile: bool = False) -> TaskHead:
    """The head of a task type (a key of :data:`HEADS`); ``compile`` selects a causal LM's compiled loss."""
    if task == "causal_lm":
        return CausalLMHead(compiled_loss=compile)
    return HEADS[task]()


__all__ = ["HEADS", "make_head", "CausalLMHead", "ClassificationHead", "TaskHead", "TokenNLL", "mean_pool"]
