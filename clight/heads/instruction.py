"""Instruction following: a causal LM judged on what it generates (exact match, ROUGE-L), on the perplexity of the
reference responses, and on general-ability probes (multiple-choice log-likelihood, held-out perplexity)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from clight.heads.base import Batch
from clight.heads.causal_lm import CausalLMHead, TokenNLL
from clight.heads.generation import decode_answers, exact_matches, greedy_generate, rouge_l
from clight.losses import causal_lm_nll

#: what each kind of evaluation task reports, its headline first
METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "generation": ("rouge_l", "exact_match", "ppl"),  # a task with prompts and reference responses
    "multiple_choice": ("mc_acc", "mc_acc_norm"),  # choose a continuation by log-likelihood
    "perplexity": ("ppl",),  # held-out text
    "lm": ("ppl",),  # continual pretraining blocks
}


class InstructionHead(CausalLMHead):
    """A causal LM evaluated task by task according to the task's kind (:data:`METRICS_BY_KIND`).

    - ``generation``: greedy ``generate`` from the prompt with the stream's token budget, then exact match
      (SQuAD's normalisation) and ROUGE-L F against the reference, and the perplexity of the reference response;
      the first generations of every task are kept in :attr:`samples` (TensorBoard shows them).
    - ``multiple_choice``: each choice is scored as a continuation of the prompt by the sum of its tokens'
      log-probabilities, as lm-evaluation-harness does; ``mc_acc`` takes the argmax, ``mc_acc_norm`` the argmax
      of the score divided by the choice's length in bytes.
    - ``perplexity``: per-token perplexity of the text.

    A task reports NaN for the metrics of other kinds. Training is the causal LM's (loss on the response).
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"rouge_l": True, "exact_match": True, "ppl": False,
                                                   "mc_acc": True, "mc_acc_norm": True}

    def __init__(self, *, compiled_loss: bool = False, num_samples: int = 4) -> None:
        super().__init__(compiled_loss=compiled_loss)
        self.eval_kinds: list[str] = []
        self.tokenizer: Any = None
        self.num_samples = num_samples

    def configure(self, backbone: nn.Module, *, eval_kinds: Sequence[str] | None = None, tokenizer: Any = None,
                  **_: Any) -> None:
        self.eval_kinds = list(eval_kinds or [])
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def metrics_of(self, task_index: int) -> tuple[str, ...]:
        kind = self.eval_kinds[task_index] if task_index < len(self.eval_kinds) else "lm"
        return METRICS_BY_KIND[kind]

    def new_metrics(self, task_index: int) -> dict[str, Metric]:
        self.samples.pop(task_index, None)
        names = self.metrics_of(task_index)
        metrics: dict[str, Metric] = {n: MeanMetric() for n in names if n != "ppl"}
        if "ppl" in names:
            metrics["nll"] = TokenNLL()
        for metric in metrics.values():
            metric.set_dtype(torch.float64)
        return metrics

    def update_metrics(self, metrics: dict[str, Metric], batch: Batch, outputs: Mapping[str, Tensor],
                       valid: Tensor, task_index: int, backbone: nn.Module | None = None) -> None:
        if "choice_of" in batch:  # multiple choice: one row per (item, choice)
            self._update_choices(metrics, batch, outputs, valid)
            return
        if "nll" in metrics:
            super().update_metrics(metrics, batch, outputs, valid, task_index)
        if "rouge_l" in metrics:
            self._update_generation(metrics, batch, valid, task_index, backbone)

    def _update_generation(self, metrics: dict[str, Metric], batch: Batch, valid: Tensor, task_index: int,
                           backbone: nn.Module) -> None:
        tok = self.tokenizer
        stop = [t for t in {tok.eos_token_id, tok.pad_token_id} if t is not None]
        new = greedy_generate(backbone, batch["gen_input_ids"], batch["gen_attention_mask"],
                              max_new_tokens=int(batch["max_new_tokens"]), eos_token_id=stop,
                              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop[0])
        answers = decode_answers(tok, new, stop)
        references = list(batch["references"])
        weight = valid.double().cpu()
        metrics["exact_match"].update(exact_matches(answers, references).double(), weight)
        metrics["rouge_l"].update(rouge_l(answers, references).double(), weight)
        kept = self.samples.setdefault(task_index, [])
        for prompt, ref, ans, ok in zip(batch["prompts"], references, answers, valid.tolist()):
            if ok and len(kept) < self.num_samples:
                kept.append({"prompt": prompt, "reference": ref, "generated": ans})

    def _update_choices(self, metrics: dict[str, Metric], batch: Batch, outputs: Mapping[str, Tensor],
                        valid: Tensor) -> None:
        labels = batch["labels"]
        score = -causal_lm_nll(outputs["logits"], labels).double().sum(1)  # (R,) log-likelihood of each choice
        items, choices = int(batch["answers"].shape[0]), int(batch["num_choices"])
        score = score.view(items, choices)  # (B, C)
        norm = score / batch["choice_bytes"].view(items, choices).double().clamp_min(1)
        answers, weight = batch["answers"], valid.double()  # `valid` is per item (the eval collate's)
        metrics["mc_acc"].update((score.argmax(-1) == answers).double(), weight)
        metrics["mc_acc_norm"].update((norm.argmax(-1) == answers).double(), weight)

    def compute_metrics(self, metrics: dict[str, Metric]) -> dict[str, float]:
        values = dict.fromkeys(self.higher_is_better, math.nan)
        for name, metric in metrics.items():
            if name == "nll":
                nll, tokens = metric.compute().tolist()
                values.update(nll=nll, ppl=math.exp(min(nll, 700.0)), count=tokens)
            else:
                values[name] = float(metric.compute())
        return values
