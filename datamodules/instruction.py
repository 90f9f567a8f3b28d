"""Continual instruction tuning: prompt/response pairs, loss on the response tokens only; evaluation by the
responses' perplexity and, with ``generate``, by the model's own greedy answers; probes of general ability."""

from __future__ import annotations

from typing import Any

import torch

from clight.datamodules.base import Example
from clight.datamodules.causal_lm import CausalLMStream, pad_lm_batch
from clight.datamodules.io import column, text_column
from clight.errors import ClightConfigError
from clight.heads.generation import left_pad
from clight.task import Probe

CHAT = "chat"


class InstructionStream(CausalLMStream):
    """A stream of instruction-tuning tasks (prompt/response rows), evaluated by response perplexity and, with
    ``generate: true``, by exact match and ROUGE-L of greedy answers (the model's ``task: instruction``).

    Each example is the formatted prompt followed by the response and the end-of-text token; the prompt's tokens
    are masked out of the loss (labels -100), so the model learns to produce responses. ``template: chat``
    formats the prompt with the tokenizer's chat template (one user turn and the generation prompt), as an
    instruction model expects. Probes (``probes``) may be multiple choice (each choice scored as a continuation
    of the formatted prompt), generation (like the tasks) or perplexity (held-out text).

    Args:
        prompt_column: column holding the instruction.
        response_column: column holding the answer.
        template: prompt template with a ``{prompt}`` field, or ``chat`` for the tokenizer's chat template.
        generate: evaluate every task by greedy generation too (exact match, ROUGE-L); the headline metric is
            then ROUGE-L.
        max_new_tokens: the generation budget of an answer, in tokens.
        **kwargs: see :class:`~clight.datamodules.CausalLMStream`.

    Example (YAML)::

        data:
          class_path: clight.datamodules.InstructionStream
          init_args:
            train_file: clight/data/llm/train.jsonl
            test_file: clight/data/llm/test.jsonl
            template: chat
            generate: true
            probes: [{name: word-meaning, file: clight/data/llm/probes.jsonl}]
    """

    def __init__(
        self,
        *,
        prompt_column: str = "prompt",
        response_column: str = "response",
        template: str = "### Instruction:\n{prompt}\n### Response:\n",
        generate: bool = False,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> None:
        if template != CHAT and "{prompt}" not in template:
            raise ClightConfigError(f"`template` must contain a `{{prompt}}` field or be `chat`, got {template!r}.")
        if max_new_tokens < 1:
            raise ClightConfigError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        super().__init__(**kwargs)
        self.prompt_column = prompt_column
        self.response_column = response_column
        self.template = template
        self.generate = generate
        self.max_new_tokens = max_new_tokens

    @property
    def eval_kind(self) -> str:  # type: ignore[override]
        return "generation" if self.generate else "lm"

    @property
    def primary_metric(self) -> str | None:
        return "rouge_l" if self.generate else None

    def format_prompt(self, prompt: str) -> str:
        """The prompt as the model sees it: the template filled in, or the chat template's user turn."""
        if self.template != CHAT:
            return self.template.format(prompt=prompt)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ClightConfigError(
                "`template: chat`: the tokenizer has no chat template. Use an instruction model's tokenizer, or a "
                "`template` string with a `{prompt}` field.")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def tokenizer_texts(self, rows: list[dict[str, Any]], path: str) -> list[str]:
        prompts, responses = self._pairs(rows, path)
        template = "{prompt}" if self.template == CHAT else self.template  # a trained tokenizer has no chat template
        return [template.format(prompt=p) + str(r) for p, r in zip(prompts, responses)]

    def _pairs(self, rows: list[dict[str, Any]], path: str) -> tuple[list[str], list[str]]:
        prompts = text_column(rows, self.prompt_column, path=path, argument="data.prompt_column")
        responses = text_column(rows, self.response_column, path=path, argument="data.response_column")
        return prompts, responses

    def encode(self, rows: list[dict[str, Any]], task_index: int, *, path: str, split: str) -> list[Example]:
        prompts, responses = self._pairs(rows, path)
        return self._encode_pairs(prompts, responses, task_index)

    def _encode_pairs(self, prompts: list[str], responses: list[str], task_index: int) -> list[Example]:
        if not prompts:
            return []
        eos = self._eos()
        p_ids = self.tokenizer([self.format_prompt(self.clip(p)) for p in prompts], add_special_tokens=False)["input_ids"]
        r_ids = self.tokenizer([self.clip(r) for r in responses], add_special_tokens=False)["input_ids"]
        examples = []
        for prompt, response, p, r in zip(prompts, responses, p_ids, r_ids):
            ids = (p + r + [eos])[: self.max_length]
            labels = ([-100] * len(p) + r + [eos])[: self.max_length]
            if any(x != -100 for x in labels[1:]):
                examples.append({"input_ids": ids, "labels": labels, "task": task_index, "prompt_ids": p,
                                 "prompt": prompt, "reference": response})
        return examples

    def encode_probe(self, rows: list[dict[str, Any]], index: int, probe: Probe) -> list[Example]:
        where = f"probes[{probe.name}].file"
        if probe.kind == "generation":
            prompts, responses = self._pairs(rows, probe.file)
            return self._encode_pairs(prompts, responses, index)
        if probe.kind == "perplexity":
            texts = [self.clip(t) for t in text_column(rows, self.text_column, path=probe.file, argument=where)]
            eos = self._eos()
            return [{"input_ids": (ids + [eos])[: self.max_length], "task": index}
                    for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [self._encode_choices(row, index, probe) for row in rows]

    def _encode_choices(self, row: dict[str, Any], index: int, probe: Probe) -> Example:
        choices, answer = row.get("choices"), row.get("answer")
        if not isinstance(choices, list) or len(choices) < 2 or not isinstance(answer, int) \
                or not 0 <= answer < len(choices):
            raise ClightConfigError(
                f"`probes[{probe.name}]`: a multiple-choice row needs `choices` (a list of >= 2 strings) and `answer` "
                f"(the index of the right one); got choices={choices!r}, answer={answer!r} in {probe.file!r}.")
        prompt = column([row], self.prompt_column, path=probe.file, argument=f"probes[{probe.name}]")[0]
        context = self.tokenizer(self.format_prompt(str(prompt)), add_special_tokens=False)["input_ids"]
        options = self.tokenizer([str(c) for c in choices], add_special_tokens=False)["input_ids"]
        return {"context": context, "choices": options, "answer": answer, "task": index,
                "choice_bytes": [len(str(c).encode()) for c in choices]}

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return pad_lm_batch(examples, self._pad())

    def collate_eval(self, examples: list[Example]) -> dict[str, Any]:
        if "choices" in examples[0]:
            return self._collate_choices(examples)
        batch: dict[str, Any] = self.collate(examples)
        if self.generate and "prompt_ids" in examples[0]:
            batch["gen_input_ids"], batch["gen_attention_mask"] = left_pad([ex["prompt_ids"] for ex in examples],
                                                                           self._pad())
            batch.update(max_new_tokens=self.max_new_tokens, prompts=[ex["prompt"] for ex in examples],
                         references=[ex["reference"] for ex in examples])
        return batch

    def _collate_choices(self, examples: list[Example]) -> dict[str, Any]:
        counts = {len(ex["choices"]) for ex in examples}
        if len(counts) != 1:
            raise ClightConfigError(f"`probes`: multiple-choice items of one probe need the same number of choices, "
                                    f"found {sorted(counts)}.")
        rows = [{"input_ids": ex["context"] + c, "labels": [-100] * len(ex["context"]) + c, "task": ex["task"]}
                for ex in examples for c in ex["choices"]]
        batch: dict[str, Any] = pad_lm_batch(rows, self._pad())
        n = counts.pop()
        batch.update(choice_of=torch.arange(len(examples)).repeat_interleave(n), num_choices=n,
                     answers=torch.tensor([ex["answer"] for ex in examples]),
                     choice_bytes=torch.tensor([b for ex in examples for b in ex["choice_bytes"]]))
        return batch

    def _pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self._eos() if pad is None else pad
