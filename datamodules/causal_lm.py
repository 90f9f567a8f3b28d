"""Causal-LM streams: continual pretraining over domains (perplexity per domain)."""

from __future__ import annotations

from typing import Any

import torch

from clight.datamodules.base import ContinualDataModule, Example
from clight.datamodules.io import text_column
from clight.errors import ClightConfigError


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic) and wrap it for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|pad|>", "<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


class CausalLMStream(ContinualDataModule):
    """Continual pretraining: one domain of raw text per task, evaluated by perplexity on every domain.

    Documents are tokenized, joined with the end-of-text token and cut into blocks of ``max_length`` tokens.
    The tokenizer is the model's own, a folder given in ``tokenizer``, or — with ``train_tokenizer_vocab`` — a
    byte-level BPE trained on the training text of the whole stream (fixed before the first task, as is usual
    for continual-pretraining benchmarks).

    Args:
        text_column: column holding the document text.
        train_tokenizer_vocab: train a BPE tokenizer of this size instead of loading one.
        **kwargs: see :class:`~clight.datamodules.ContinualDataModule`.

    Example (YAML)::

        data:
          class_path: clight.datamodules.CausalLMStream
          init_args:
            train_file: clight/data/domains/train.jsonl
            test_file: clight/data/domains/test.jsonl
            train_tokenizer_vocab: 2048
            max_length: 128
    """

    def __init__(self, *, text_column: str = "text", train_tokenizer_vocab: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if train_tokenizer_vocab is not None and train_tokenizer_vocab < 300:
            raise ClightConfigError(
                f"`train_tokenizer_vocab` must be >= 300 (256 bytes + specials + merges), got {train_tokenizer_vocab}."
            )
        if train_tokenizer_vocab is not None and self.tokenizer_path is not None:
            raise ClightConfigError("give `tokenizer` or `train_tokenizer_vocab`, not both.")
        self.text_column = text_column
        self.train_tokenizer_vocab = train_tokenizer_vocab

    def make_tokenizer(self) -> Any:
        if self.train_tokenizer_vocab is None:
            return super().make_tokenizer()
        tasks, train_rows, _ = self._read_tasks()
        texts = [text for t, rows in zip(tasks, train_rows) for text in self.tokenizer_texts(rows, self._path(t, "train"))]
        return train_bpe_tokenizer(texts, self.train_tokenizer_vocab)

    def tokenizer_texts(self, rows: list[dict[str, Any]], path: str) -> list[str]:
        """The text of a task's training rows that a trained tokenizer learns from."""
        return text_column(rows, self.text_column, path=path, argument="data.text_column")

    def _eos(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = self.tokenizer.sep_token_id
        if eos is None:
            raise ClightConfigError("the tokenizer has neither an eos nor a sep token to separate documents.")
        return eos

    def encode(self, rows: list[dict[str, Any]], task_index: int, *, path: str, split: str) -> list[Example]:
        texts = text_column(rows, self.text_column, path=path, argument="data.text_column")  # packed: not clipped
        if not texts:
            return []
        eos = self._eos()
        stream: list[int] = []
        for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        block = self.max_length
        blocks = [stream[i : i + block] for i in range(0, len(stream) - 1, block)]
        return [{"input_ids": b, "task": task_index} for b in blocks if len(b) > 1]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return pad_lm_batch(examples, self.tokenizer.pad_token_id or self._eos())


def pad_lm_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``labels`` with -100) into a batch. Examples without ``labels`` are trained
    on every token."""
    width = max(len(ex["input_ids"]) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = torch.tensor(ex["input_ids"])
        n = ids.numel()
        input_ids[row, :n] = ids
        labels[row, :n] = torch.tensor(ex["labels"]) if "labels" in ex else ids
        attention[row, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "task_index": torch.tensor([ex["task"] for ex in examples]),
    }
