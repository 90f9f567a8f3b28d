"""Continual task streams (``clight.datamodules``)."""

from clight.datamodules.base import ContinualDataModule
from clight.datamodules.causal_lm import CausalLMStream
from clight.datamodules.classification import TextClassificationStream
from clight.datamodules.instruction import InstructionStream
from clight.datamodules.tokenizers import load_tokenizer

__all__ = ["CausalLMStream", "ContinualDataModule", "InstructionStream", "TextClassificationStream", "load_tokenizer"]
