"""Losses of :class:`~clight.module.ContinualModule`: a per-token causal-LM NLL that stays lean for large
vocabularies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

_LEAN_LOSS_ELEMENTS = 2**28  # logits larger than this (e.g. 8 x 2048 tokens x 128k vocab) take the chunked path
_LEAN_LOSS_CHUNK = 2**26  # logit elements per chunk on that path


def _token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="none")


def causal_lm_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token next-token NLL, 0 where the label is -100. ``(B, T, V), (B, T) -> (B, T-1)``.

    Memory-lean for large vocabularies: instead of shifting the logits (a copy of the whole ``(B, T, V)`` tensor)
    the labels are shifted, and above ``2**28`` logit elements the fp32 log-softmax is computed in chunks of about
    ``2**26`` elements under activation checkpointing, so neither an fp32 copy of the logits nor the saved
    log-softmax of the whole batch is ever held (the same values; only the summation order differs).
    """
    batch, width, vocab = logits.shape
    shifted = torch.cat([labels[:, 1:], labels.new_full((batch, 1), -100)], dim=1).reshape(-1)  # (B*T,)
    flat = logits.reshape(-1, vocab)  # a view: logits are contiguous
    if flat.numel() <= _LEAN_LOSS_ELEMENTS:
        nll = _token_nll(flat, shifted)
    else:
        chunk = max(1, _LEAN_LOSS_CHUNK // vocab)
        parts = []
        for start in range(0, flat.shape[0], chunk):
            rows, targets = flat[start : start + chunk], shifted[start : start + chunk]
            if torch.is_grad_enabled() and flat.requires_grad:
                parts.append(torch.utils.checkpoint.checkpoint(_token_nll, rows, targets, use_reentrant=False))
            else:
                parts.append(_token_nll(rows, targets))
        nll = torch.cat(parts)
    return nll.view(batch, width)[:, :-1]
