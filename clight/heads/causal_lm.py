"""Causal language modelling with the backbone's own LM head: next-token NLL on the labelled positions, and
per-token perplexity in evaluation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from clight.heads.base import Batch, TaskHead
from clight.losses import causal_lm_nll, compiled_causal_lm_nll


class TokenNLL(Metric):
    """Mean next-token NLL over the labelled tokens of every batch, summed in float64 and synced across ranks.

    torchmetrics' own ``Perplexity`` takes the ``(B, T, V)`` logits and builds their fp32 softmax (8.6 GB at
    8 × 2048 tokens × a 128k vocabulary); this takes the per-token NLL that :func:`clight.losses.causal_lm_nll`
    computes without that copy."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, tokens: Tensor) -> None:  # per-token NLL and the 0/1 weights of the tokens
        self.nll += (nll * tokens).sum().double()
        self.tokens += tokens.sum().double()

    def compute(self) -> Tensor:
        """``[mean NLL, tokens]`` over every rank's batches."""
        return torch.stack([self.nll / self.tokens.clamp_min(1.0), self.tokens])


class CausalLMHead(TaskHead):
    """Next-token prediction; the loss covers the positions whose label is not -100.

    Args:
        compiled_loss: train with the compiled loss (:func:`clight.losses.compiled_causal_lm_nll`, what
            ``model.compile: true`` selects) instead of the eager chunked one.
    """

    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    higher_is_better: ClassVar[dict[str, bool]] = {"ppl": False}

    def __init__(self, *, compiled_loss: bool = False) -> None:
        super().__init__()
        self.compiled_loss = compiled_loss

    def encode(self, backbone: nn.Module, batch: Batch) -> Tensor:
        mask = batch["attention_mask"]
        if bool(mask.all()):
            # No padding: let SDPA use its causal (flash) kernel. transformers cannot check this inside a
            # compiled backbone and would build a (B, 1, T, T) mask; one host sync per step is far cheaper.
            mask = None
        logits = backbone(input_ids=batch["input_ids"], attention_mask=mask).logits
        length = batch["input_ids"].shape[1]
        # peft's prompt tuning / P-tuning prepend virtual tokens: keep the positions of the real ones
        return logits[:, -length:] if logits.shape[1] > length else logits

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"logits": logits}

    def loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        logits, labels = outputs["logits"], batch["labels"]
        nll = compiled_causal_lm_nll()(logits, labels) if self.compiled_loss else causal_lm_nll(logits, labels)
        return nll.sum() / (labels[:, 1:] != -100).sum().clamp_min(1)

    def per_example_loss(self, batch: Batch, outputs: Mapping[str, Tensor]) -> Tensor:
        labels = batch["labels"]
        return causal_lm_nll(outputs["logits"].float(), labels).sum(1) / (labels[:, 1:] != -100).sum(1).clamp_min(1)

    def sample_labels(self, batch: Batch, outputs: Mapping[str, Tensor], uniforms: Tensor) -> dict[str, Tensor]:
        logits = outputs["logits"].detach().float()
        cdf = logits[:, :-1].softmax(-1).cumsum(-1)  # (B, T-1, V): position t predicts token t+1
        u = uniforms[:, : cdf.shape[1]].to(cdf.dtype).unsqueeze(-1)  # (B, T-1, 1)
        drawn = torch.searchsorted(cdf, u).squeeze(-1).clamp_max(cdf.shape[-1] - 1)  # (B, T-1)
        labels = batch["labels"].clone()
        labels[:, 1:] = torch.where(labels[:, 1:] != -100, drawn, labels[:, 1:])
        return {**batch, "labels": labels}

    def label_width(self, max_length: int) -> int:
        return max_length

    def new_metrics(self, task_index: int) -> dict[str, Metric]:
        return {"nll": TokenNLL()}

    def update_metrics(self, metrics: dict[str, Metric], batch: Batch, outputs: Mapping[str, Tensor],
                       valid: Tensor, task_index: int, backbone: nn.Module | None = None) -> None:
        nll = causal_lm_nll(outputs["logits"], batch["labels"])  # (B, T-1), computed in fp32
        tokens = (batch["labels"][:, 1:] != -100) & valid.unsqueeze(1)
        metrics["nll"].update(nll, tokens)

    def compute_metrics(self, metrics: dict[str, Metric]) -> dict[str, float]:
        nll, tokens = metrics["nll"].compute().tolist()
        return {"nll": nll, "ppl": math.exp(min(nll, 700.0)), "count": tokens}
