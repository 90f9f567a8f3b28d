"""Losses of :class:`~clight.module.ContinualModule`: a per-token causal-LM NLL that stays lean for large
vocabularies."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_LEAN_LOSS_ELEMENTS = 2**28  # logits larger than this (e.g. 8 x 2048 tokens x 128k vocab) take the chunked path
_LEAN_LOSS_CHUNK = 2**26  # logit elements per chunk on that path


class _ChunkedNLL(torch.autograd.Function):
    """Per-row ``logsumexp(x) − x[target]`` of ``(N, V)`` logits, in fp32, ``chunk`` rows at a time.

    Forward keeps only the logits (already alive for the LM head's graph) and the ``(N,)`` log-normalisers;
    backward writes ``g · (softmax(x) − onehot)`` chunk by chunk into one gradient the size of the logits.
    (Slicing the logits and letting autograd differentiate each chunk instead costs one full-size zero tensor
    and one full-size addition per chunk: ``tools/bench/loss_speed.py`` times both.)"""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        rows = logits.shape[0]
        nll = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        for s in range(0, rows, chunk):
            x, t = logits[s : s + chunk].float(), targets[s : s + chunk]
            lse[s : s + chunk] = torch.logsumexp(x, dim=-1)
            picked = x.gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1)
            nll[s : s + chunk] = torch.where(t != -100, lse[s : s + chunk] - picked, 0.0)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return nll

    @staticmethod
    def backward(ctx, grad_nll: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            t = targets[s : s + ctx.chunk]
            g = torch.where(t != -100, grad_nll[s : s + ctx.chunk].float(), 0.0).unsqueeze(1)  # (n, 1)
            p = logits[s : s + ctx.chunk].float().sub_(lse[s : s + ctx.chunk].unsqueeze(1)).exp_().mul_(g)
            p.scatter_add_(1, t.clamp_min(0).unsqueeze(1), -g)  # − g at the target
            grad[s : s + ctx.chunk] = p
        return grad, None, None


def causal_lm_nll(logits: Tensor, labels: Tensor, *, chunked: bool | None = None) -> Tensor:
    """Per-token next-token NLL, 0 where the label is -100. ``(B, T, V), (B, T) -> (B, T-1)``.

    Memory-lean for large vocabularies: instead of shifting the logits (a copy of the whole ``(B, T, V)`` tensor)
    the labels are shifted, and above ``2**28`` logit elements the fp32 log-softmax and its gradient are computed
    in chunks of about ``2**26`` elements (:class:`_ChunkedNLL`), so no fp32 copy of the whole logits and no saved
    log-softmax is ever held; the gradient is the one tensor the size of the logits (the same values as
    ``F.cross_entropy``; only the summation order differs). ``chunked=False`` always takes the one
    ``F.cross_entropy``, which is what ``torch.compile`` fuses best (:func:`compiled_causal_lm_nll`).
    """
    batch, width, vocab = logits.shape
    shifted = torch.cat([labels[:, 1:], labels.new_full((batch, 1), -100)], dim=1).reshape(-1)  # (B*T,)
    flat = logits.reshape(-1, vocab)  # a view: logits are contiguous
    if chunked is False or (chunked is None and flat.numel() <= _LEAN_LOSS_ELEMENTS):
        nll = F.cross_entropy(flat.float(), shifted, ignore_index=-100, reduction="none")
    else:
        nll = _ChunkedNLL.apply(flat, shifted, max(1, _LEAN_LOSS_CHUNK // vocab))
    return nll.view(batch, width)[:, :-1]


@functools.cache
def compiled_causal_lm_nll() -> Callable[[Tensor, Tensor], Tensor]:
    """The training loss of a module with ``compile: true``: :func:`causal_lm_nll` with ``chunked=False`` under
    ``torch.compile``, where the upcast, log-softmax and gradient fuse into kernels that hold nothing but the
    logits' gradient (eager, that form holds an fp32 copy of the logits and its log-softmax). Compiled on first
    use; one process-wide instance, so every task's Trainer reuses its graph. ``python tools/bench/loss_speed.py``
    times it against the eager chunked loss."""
    return torch.compile(functools.partial(causal_lm_nll, chunked=False))
