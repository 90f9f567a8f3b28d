"""Validation and NaN-aware helpers of :mod:`clight.functional.metrics`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MatrixLike = torch.Tensor | Sequence[Sequence[float]]
VectorLike = torch.Tensor | Sequence[float]


def _as_float64(value: object, name: str) -> torch.Tensor:
    """Converts ``value`` to a float64 CPU tensor, raising ``ValueError`` for ragged input."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"{name} must be a rectangular array of numbers; could not convert it: {err}"
        ) from err


def _as_matrix(R: MatrixLike) -> torch.Tensor:
    """Validates ``R`` and returns it as a float64 tensor of shape ``(S, T)``, ``S, T >= 1``."""
    mat = _as_float64(R, "R")
    if mat.dim() != 2:
        raise ValueError(f"R must be a 2-D matrix of shape (S, T); got shape {tuple(mat.shape)}")
    if mat.shape[0] < 1 or mat.shape[1] < 1:
        raise ValueError(f"R must have shape (S, T) with S >= 1 and T >= 1; got shape {tuple(mat.shape)}")
    return mat


def _as_initial(initial: VectorLike, num_tasks: int) -> torch.Tensor:
    """Validates ``initial`` and returns it as a float64 tensor of shape ``(T,)``."""
    vec = _as_float64(initial, "initial")
    if vec.dim() != 1 or vec.shape[0] != num_tasks:
        raise ValueError(
            f"initial must be a 1-D row of shape ({num_tasks},) (one value per task of R); "
            f"got shape {tuple(vec.shape)}"
        )
    return vec


def _is_square_sequence(mat: torch.Tensor) -> bool:
    """Whether ``mat`` follows the sequential protocol with at least two tasks."""
    return mat.shape[0] == mat.shape[1] and mat.shape[1] >= 2


def _nan_mean(terms: torch.Tensor) -> float:
    """Mean of the non-NaN entries of ``terms``; ``nan`` if there are none."""
    valid = terms[~torch.isnan(terms)]
    if valid.numel() == 0:
        return math.nan
    return float(valid.mean())
