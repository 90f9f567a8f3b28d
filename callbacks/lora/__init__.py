"""LoRA adapters across tasks: one per task, a chain of merged adapters, orthogonal adapters, and AdaLoRA's rank
budget. The base :class:`~clight.callbacks.lora.base.LoRACallback` checks for a LoRA backbone and initialises
adapters."""

from clight.callbacks.lora.adalora import AdaLoRABudget
from clight.callbacks.lora.base import LoRACallback
from clight.callbacks.lora.chain_of_lora import ChainOfLoRA
from clight.callbacks.lora.lora_per_task import LoRAPerTask
from clight.callbacks.lora.orthogonal_lora import OrthogonalLoRA

__all__ = ["AdaLoRABudget", "ChainOfLoRA", "LoRACallback", "LoRAPerTask", "OrthogonalLoRA"]
