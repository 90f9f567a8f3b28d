"""Pure tensor math of the regularization and distillation callbacks (quadratic penalties, distillation losses).

The quadratic family (EWC, online EWC, MAS, SI, L2 toward an anchor) shares one penalty,
``λ/2 · Σ Ω (θ − θ*)²`` over the tracked parameters, whose gradient ``λ Ω (θ − θ*)`` the callbacks add to the
accumulated gradient in one pass of ``torch._foreach_*`` kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _as(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``tensors`` in ``dtype`` (the same list when they already are)."""
    if all(t.dtype == dtype for t in tensors):
        return tensors
    return [t.to(dtype) for t in tensors]


def quadratic_penalty(params: list[Tensor], anchors: list[Tensor], importances: list[Tensor] | None,
                      strength: float) -> Tensor:
    """``strength/2 · Σ Ω (θ − θ*)²`` as a differentiable scalar (``importances=None``: ``Ω = 1``).

    ``anchors`` and ``importances`` may be in a wider dtype than ``params`` (fp32 state for bf16 weights); the
    difference is taken in the state's dtype."""
    if not params:
        raise ValueError("quadratic_penalty needs at least one parameter")
    diffs = torch._foreach_sub(_as(params, anchors[0].dtype), anchors)
    weighted = torch._foreach_mul(diffs, importances) if importances is not None else diffs
    total = torch.stack([(w * d).sum() for w, d in zip(weighted, diffs)]).sum()
    return 0.5 * strength * total


_GROUP_ELEMENTS = 2**27  # parameters per group of add_quadratic_penalty_grad_ (its temporaries stay this small)


def _groups(tensors: list[Tensor], limit: int) -> list[slice]:
    """Consecutive slices of ``tensors`` of at most ``limit`` elements each (a larger tensor gets its own)."""
    out, start, size = [], 0, 0
    for i, t in enumerate(tensors):
        if size and size + t.numel() > limit:
            out.append(slice(start, i))
            start, size = i, 0
        size += t.numel()
    if start < len(tensors):
        out.append(slice(start, len(tensors)))
    return out


@torch.no_grad()
def add_quadratic_penalty_grad_(grads: list[Tensor], params: list[Tensor], anchors: list[Tensor],
                                importances: list[Tensor] | None, strength: float, *,
                                return_value: bool = False) -> Tensor | None:
    """Add the penalty's gradient ``strength · Ω (θ − θ*)`` to ``grads`` in place.

    ``_foreach`` passes over groups of about ``2**27`` elements, each with one temporary (``θ − θ*``, turned into
    ``Ω (θ − θ*)`` in place), so the extra memory is one group's (512 MiB in fp32, or the largest single tensor),
    not a copy of every parameter (5 GiB for a 1.2B model). With ``return_value`` the penalty
    ``strength/2 · Σ Ω (θ − θ*)²`` is also returned (a second temporary and two more passes: ask for it on
    logging steps only), else ``None``. ``grads`` keep their dtype."""
    state_dtype = anchors[0].dtype
    total = None
    for part in _groups(params, _GROUP_ELEMENTS):
        g, p, a = grads[part], params[part], anchors[part]
        imp = importances[part] if importances is not None else None
        diffs = torch._foreach_sub(_as(p, state_dtype), a)  # θ − θ*
        if return_value:
            squares = torch._foreach_mul(diffs, diffs)  # a second temporary, on logging steps only
            if imp is not None:
                torch._foreach_mul_(squares, imp)
            value = torch.stack(torch._foreach_norm(squares, 1)).sum()  # entries are >= 0
            total = value if total is None else total + value
            del squares
        if imp is not None:
            torch._foreach_mul_(diffs, imp)  # Ω (θ − θ*)
        if all(x.dtype == state_dtype for x in g):
            torch._foreach_add_(g, diffs, alpha=strength)
        else:
            torch._foreach_add_(g, [w.to(x.dtype) for w, x in zip(diffs, g)], alpha=strength)
        del diffs
    return 0.5 * strength * total if total is not None else None


def normalize_importance_(importances: list[Tensor], *, count: int | None = None,
                          reduce: Callable[[Tensor], Tensor] | None = None) -> float:
    """Divide ``importances`` in place by their mean over all elements (so it becomes 1); return that mean.

    Keeps the strength ``λ`` on the same scale for every model size and estimator (a normalised Ω has mean 1,
    the Ω of plain L2). A zero mean leaves them untouched. For shards of larger tensors (FSDP), ``reduce`` sums
    the local total over the ranks and ``count`` is the number of elements of the full tensors."""
    total = torch.stack([t.double().sum() for t in importances]).sum()
    if reduce is not None:
        total = reduce(total)
    count = sum(t.numel() for t in importances) if count is None else count
    mean = float(total) / max(count, 1)
    if mean > 0:
        torch._foreach_div_(importances, mean)
    return mean


def distillation_kl(student: Tensor, teacher: Tensor, temperature: float = 2.0, *, top_k: int | None = None,
                    mask: Tensor | None = None) -> Tensor:
    """``T² · KL(p_teacher ‖ p_student)`` with both distributions softened by ``temperature``.

    ``student`` and ``teacher`` are logits ``(..., V)``; the KL of every leading position is averaged (over the
    positions where ``mask`` (``(...)``, bool) is true when given). With ``top_k`` both distributions are
    restricted to the teacher's ``k`` largest logits at each position and renormalised there."""
    s, t = student.float() / temperature, teacher.float() / temperature
    if top_k is not None and top_k < t.shape[-1]:
        t, index = t.topk(top_k, dim=-1)  # (..., k)
        s = s.gather(-1, index)
    log_p_t = F.log_softmax(t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).sum(-1)  # (...)
    if mask is not None:
        kl = kl * mask
        denom = mask.sum().clamp_min(1)
    else:
        denom = kl.numel()
    return temperature**2 * kl.sum() / denom


def feature_distance(student: Tensor, teacher: Tensor, loss: str, mask: Tensor | None = None) -> Tensor:
    """Mean distance between hidden states ``(B, T, H)`` over the positions where ``mask`` ``(B, T)`` is true:
    ``mse`` (mean squared error per element) or ``cosine`` (``1 − cos`` per position)."""
    s, t = student.float(), teacher.float()
    if loss == "mse":
        per_position = (s - t).pow(2).mean(-1)  # (B, T)
    elif loss == "cosine":
        per_position = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)  # (B, T)
    else:
        raise ValueError(f"unknown feature loss {loss!r}")
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1)
