"""Continual task streams (``clight.datamodules``)."""

from clight.datamodules.base import ContinualDataModule, load_tokenizer
from clight.datamodules.causal_lm import CausalLMStream
from clight.datamodules.classification import TextClassificationStream
from clight.datamodules.instruction import InstructionStream

__all__ = ["CausalLMStream", "ContinualDataModule", "InstructionStream", "TextClassificationStream", "load_tokenizer"]
