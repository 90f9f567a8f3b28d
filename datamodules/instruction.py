"""Continual instruction tuning: prompt/response pairs, loss on the response tokens only."""

from __future__ import annotations

from typing import Any

import torch

from clight.datamodules.base import Example
from clight.datamodules.causal_lm import CausalLMStream, pad_lm_batch
from clight.datamodules.io import column
from clight.errors import ClightConfigError


class InstructionStream(CausalLMStream):
    """A stream of instruction-tuning tasks (prompt/response JSONL), evaluated by response perplexity.

    Each example is ``template.format(prompt=...)`` followed by the response and the end-of-text token; the
    prompt's tokens are masked out of the loss (labels -100), so the model learns to produce responses.

    Args:
        prompt_column: column holding the instruction.
        response_column: column holding the answer.
        template: prompt template with a ``{prompt}`` field.
        **kwargs: see :class:`~clight.datamodules.CausalLMStream`.

    Example (YAML)::

        data:
          class_path: clight.datamodules.InstructionStream
          init_args:
            train_file: clight/data/instruct/train.jsonl
            test_file: clight/data/instruct/test.jsonl
            train_tokenizer_vocab: 2048
    """

    def __init__(
        self,
        *,
        prompt_column: str = "prompt",
        response_column: str = "response",
        template: str = "### Instruction:\n{prompt}\n### Response:\n",
        **kwargs: Any,
    ) -> None:
        if "{prompt}" not in template:
            raise ClightConfigError(f"`template` must contain a `{{prompt}}` field, got {template!r}.")
        super().__init__(**kwargs)
        self.prompt_column = prompt_column
        self.response_column = response_column
        self.template = template

    def tokenizer_texts(self, rows: list[dict[str, Any]], path: str) -> list[str]:
        prompts = column(rows, self.prompt_column, path=path, argument="data.prompt_column")
        responses = column(rows, self.response_column, path=path, argument="data.response_column")
        return [self.template.format(prompt=p) + str(r) for p, r in zip(prompts, responses)]

    def encode(self, rows: list[dict[str, Any]], task_index: int, *, path: str, split: str) -> list[Example]:
        prompts = [str(p) for p in column(rows, self.prompt_column, path=path, argument="data.prompt_column")]
        responses = [str(r) for r in column(rows, self.response_column, path=path, argument="data.response_column")]
        if not prompts:
            return []
        eos = self._eos()
        p_ids = self.tokenizer([self.template.format(prompt=p) for p in prompts], add_special_tokens=False)["input_ids"]
        r_ids = self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        examples = []
        for p, r in zip(p_ids, r_ids):
            ids = (p + r + [eos])[: self.max_length]
            labels = ([-100] * len(p) + r + [eos])[: self.max_length]
            if any(x != -100 for x in labels[1:]):
                examples.append({"input_ids": ids, "labels": labels, "task": task_index})
        return examples

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return pad_lm_batch(examples, self.tokenizer.pad_token_id or self._eos())
