"""Model merging as pure functions over task vectors (``{parameter name: tensor}`` dicts).

A *task vector* is ``τ_t = θ_t − θ_0``: fine-tuned weights minus the base (pretrained) weights. Every merge here
takes a sequence of task vectors with the same keys and shapes and returns one merged task vector ``τ_m``
(float32); the merged model is ``θ_0 + τ_m`` (:func:`add_task_vector`). Methods that sparsify each task vector
independently (TIES' trim, DARE's drop, Breadcrumbs' mask) expose that step on its own (:func:`trim_magnitude`,
:func:`dare_drop`, :func:`breadcrumbs_mask`), so a caller can store the sparse vectors and combine them later
(``ties(vs) == combine_ties([trim_magnitude(v) for v in vs])``). All masks and counts are per tensor (per
parameter, "layer-wise"), as in peft's merging utilities, whose sign election and disjoint mean TIES reuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge
from torch import Tensor

TaskVector = Mapping[str, Tensor]
MergeMethod = Literal["task_arithmetic", "ties", "dare", "magmax", "breadcrumbs", "model_stock"]
MERGE_METHODS: tuple[str, ...] = ("task_arithmetic", "ties", "dare", "magmax", "breadcrumbs", "model_stock")


# ---- task vectors ------------------------------------------------------------------------------------------
def task_vector(finetuned: TaskVector, base: TaskVector) -> dict[str, Tensor]:
    """``τ = θ_finetuned − θ_base`` for every key of ``finetuned`` (float32)."""
    missing = sorted(set(finetuned) - set(base))
    if missing:
        raise KeyError(f"the base has no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return {k: finetuned[k].float() - base[k].to(finetuned[k].device).float() for k in finetuned}


def add_task_vector(base: TaskVector, delta: TaskVector, scale: float = 1.0) -> dict[str, Tensor]:
    """``θ = θ_base + scale · τ`` for every key of ``delta``, in the base's dtype."""
    return {k: (base[k].float() + scale * delta[k].to(base[k].device).float()).to(base[k].dtype) for k in delta}


def _check(vectors: Sequence[TaskVector]) -> list[str]:
    if not vectors:
        raise ValueError("merging needs at least one task vector")
    keys = list(vectors[0])
    for i, v in enumerate(vectors[1:], 1):
        if set(v) != set(keys):
            raise ValueError(f"task vector {i} has different keys from task vector 0")
        for k in keys:
            if v[k].shape != vectors[0][k].shape:
                raise ValueError(f"`{k}`: shape {tuple(v[k].shape)} in task vector {i}, "
                                 f"{tuple(vectors[0][k].shape)} in task vector 0")
    return keys


def _stack(vectors: Sequence[TaskVector], key: str) -> Tensor:
    first = vectors[0][key]
    return torch.stack([v[key].to(first.device).float() for v in vectors])  # (N, *shape)


# ---- per-vector sparsification -----------------------------------------------------------------------------
def trim_magnitude(vector: TaskVector, density: float) -> dict[str, Tensor]:
    """TIES' *trim*: in each tensor keep the ``k = ceil(density · numel)`` entries of largest magnitude (every
    entry tied with the k-th largest is kept too) and zero the rest."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    out = {}
    for key, t in vector.items():
        t = t.float()
        flat = t.abs().reshape(-1)
        k = min(flat.numel(), math.ceil(density * flat.numel()))
        if k >= flat.numel():
            out[key] = t.clone()
            continue
        threshold = flat.kthvalue(flat.numel() - k + 1).values  # the k-th largest magnitude
        out[key] = torch.where(t.abs() >= threshold, t, torch.zeros_like(t))
    return out


def dare_drop(vector: TaskVector, drop_rate: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """DARE's *drop and rescale*: every entry is dropped with probability ``p = drop_rate`` and the survivors are
    scaled by ``1 / (1 − p)``. The draws are ``u = torch.rand(numel, generator=generator)`` per tensor, tensors in
    sorted key order; entry ``i`` survives when ``u[i] >= p``. ``generator`` lives on the CPU."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    out = {}
    for key in sorted(vector):
        t = vector[key].float()
        u = torch.rand(t.numel(), generator=generator).view(t.shape).to(t.device)
        out[key] = torch.where(u >= drop_rate, t / (1.0 - drop_rate), torch.zeros_like(t))
    return {key: out[key] for key in vector}


def breadcrumbs_mask(vector: TaskVector, bottom: float, top: float) -> dict[str, Tensor]:
    """Model Breadcrumbs' mask: in each tensor zero the ``floor(bottom · numel)`` entries of smallest magnitude
    (small noise) and the ``floor(top · numel)`` of largest magnitude (outliers); ties are ordered by position."""
    if not (0.0 <= bottom < 1.0 and 0.0 <= top < 1.0 and bottom + top < 1.0):
        raise ValueError(f"need 0 <= bottom, top and bottom + top < 1, got bottom={bottom}, top={top}")
    out = {}
    for key, t in vector.items():
        t = t.float()
        flat = t.reshape(-1)
        n = flat.numel()
        lo, hi = math.floor(bottom * n), n - math.floor(top * n)
        order = torch.sort(flat.abs(), stable=True).indices  # ascending magnitude
        keep = torch.zeros(n, dtype=torch.bool, device=t.device)
        keep[order[lo:hi]] = True
        out[key] = torch.where(keep.view(t.shape), t, torch.zeros_like(t))
    return out


# ---- combining ---------------------------------------------------------------------------------------------
def combine_sum(vectors: Sequence[TaskVector], scale: float = 1.0) -> dict[str, Tensor]:
    """``scale · Σ_t τ_t``."""
    return {k: scale * _stack(vectors, k).sum(0) for k in _check(vectors)}


def combine_ties(vectors: Sequence[TaskVector], scale: float = 1.0,
                 majority: Literal["total", "frequency"] = "total") -> dict[str, Tensor]:
    """TIES' *elect* and *disjoint merge* on (already trimmed) vectors: the elected sign of every entry is that of
    ``Σ_t τ_t`` (``majority: total``; ``frequency``: the sign most vectors have; 0 counts as +), and the entry is
    ``scale ·`` the mean of the non-zero values that have the elected sign (0 when none has)."""
    out = {}
    for k in _check(vectors):
        stacked = _stack(vectors, k)  # (N, *shape)
        out[k] = scale * disjoint_merge(stacked, calculate_majority_sign_mask(stacked, method=majority))
    return out


def combine_magmax(vectors: Sequence[TaskVector], scale: float = 1.0) -> dict[str, Tensor]:
    """MagMax's per-entry selection: ``scale · τ_{t*}`` with ``t* = argmax_t |τ_t|`` (the first task on ties)."""
    out = {}
    for k in _check(vectors):
        stacked = _stack(vectors, k)  # (N, *shape)
        index = stacked.abs().argmax(0, keepdim=True)  # (1, *shape)
        out[k] = scale * stacked.gather(0, index).squeeze(0)
    return out


def model_stock_ratio(stacked: Tensor) -> Tensor:
    """Model Stock's interpolation ratio for one layer from its ``N`` task vectors ``(N, *shape)``:
    ``t = N·cosθ / (1 + (N − 1)·cosθ)`` with ``cosθ`` the mean pairwise cosine between the vectors (clamped to
    ``[0, 1]``; a zero vector has cosine 0 with everything). ``N = 1`` gives ``t = 1``."""
    n = stacked.shape[0]
    if n == 1:
        return stacked.new_ones(())
    flat = stacked.reshape(n, -1)
    unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T  # (N, N)
    mean_cos = ((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))).clamp(0.0, 1.0)
    return n * mean_cos / (1 + (n - 1) * mean_cos)


def combine_model_stock(vectors: Sequence[TaskVector]) -> dict[str, Tensor]:
    """Model Stock per layer: ``t · mean_t τ_t`` with ``t`` from :func:`model_stock_ratio`."""
    out = {}
    for k in _check(vectors):
        stacked = _stack(vectors, k)
        out[k] = model_stock_ratio(stacked) * stacked.mean(0)
    return out


# ---- the methods -------------------------------------------------------------------------------------------
def task_arithmetic(vectors: Sequence[TaskVector], *, scale: float = 1.0) -> dict[str, Tensor]:
    """Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023).

    ``τ_m = λ · Σ_t τ_t`` with ``λ = scale`` (``scale = 1/N`` averages the models)."""
    return combine_sum(vectors, scale)


def ties(vectors: Sequence[TaskVector], *, density: float = 0.2, scale: float = 1.0,
         majority: Literal["total", "frequency"] = "total") -> dict[str, Tensor]:
    """TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023).

    Trim: ``τ̂_t`` keeps the top ``density`` fraction of each ``τ_t`` by magnitude. Elect:
    ``γ = sgn(Σ_t τ̂_t)``. Disjoint merge: ``τ_m^p = λ · (1/|A^p|) Σ_{t ∈ A^p} τ̂_t^p`` with
    ``A^p = {t : sgn(τ̂_t^p) = γ^p}``, ``λ = scale``."""
    return combine_ties([trim_magnitude(v, density) for v in vectors], scale, majority)


def dare(vectors: Sequence[TaskVector], *, drop_rate: float = 0.5, scale: float = 1.0,
         generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", ICML 2024), merged by task arithmetic.

    ``τ̃_t = (1 − m_t) ⊙ τ_t / (1 − p)`` with ``m_t ~ Bernoulli(p)``, ``p = drop_rate``;
    ``τ_m = λ · Σ_t τ̃_t``. Draws come from ``generator`` (vectors in order; see :func:`dare_drop`)."""
    return combine_sum([dare_drop(v, drop_rate, generator) for v in vectors], scale)


def magmax(vectors: Sequence[TaskVector], *, scale: float = 1.0) -> dict[str, Tensor]:
    """MagMax (Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual Learning", ECCV 2024).

    For every parameter entry ``p``: ``τ_m^p = λ · τ_{t*}^p`` with ``t* = argmax_t |τ_t^p|``, ``λ = scale``.
    The paper fine-tunes sequentially and merges the task vectors relative to the pretrained model."""
    return combine_magmax(vectors, scale)


def breadcrumbs(vectors: Sequence[TaskVector], *, bottom: float = 0.85, top: float = 0.01,
                scale: float = 1.0) -> dict[str, Tensor]:
    """Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
    Masks", ECCV 2024).

    Per layer mask the ``bottom`` fraction of smallest-magnitude and the ``top`` fraction of largest-magnitude
    entries of each ``τ_t`` (``m_t``), then ``τ_m = λ · Σ_t m_t ⊙ τ_t``, ``λ = scale``."""
    return combine_sum([breadcrumbs_mask(v, bottom, top) for v in vectors], scale)


def model_stock(vectors: Sequence[TaskVector]) -> dict[str, Tensor]:
    """Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models", ECCV 2024).

    Per layer, with ``N`` fine-tuned models ``θ_i = θ_0 + τ_i``: ``cosθ`` = the mean pairwise cosine between the
    ``τ_i``, ``t = N·cosθ / (1 + (N − 1)·cosθ)`` and ``θ_H = t · mean_i θ_i + (1 − t) · θ_0``, i.e.
    ``τ_m = t · mean_i τ_i``. It needs ``N >= 2`` models to measure an angle; with one, ``t = 1``."""
    return combine_model_stock(vectors)


def merge(method: MergeMethod, vectors: Sequence[TaskVector], *, scale: float = 1.0, density: float = 0.2,
          drop_rate: float = 0.5, bottom: float = 0.85, top: float = 0.01,
          generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Merge task vectors with ``method`` (options that a method does not use are ignored; ``model_stock``
    takes no ``scale``)."""
    if method == "task_arithmetic":
        return task_arithmetic(vectors, scale=scale)
    if method == "ties":
        return ties(vectors, density=density, scale=scale)
    if method == "dare":
        return dare(vectors, drop_rate=drop_rate, scale=scale, generator=generator)
    if method == "magmax":
        return magmax(vectors, scale=scale)
    if method == "breadcrumbs":
        return breadcrumbs(vectors, bottom=bottom, top=top, scale=scale)
    if method == "model_stock":
        return model_stock(vectors)
    raise ValueError(f"unknown merge method {method!r}; choose one of {list(MERGE_METHODS)}")
