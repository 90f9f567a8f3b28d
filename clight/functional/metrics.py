"""Continual-learning summary metrics computed from a result matrix.

All functions in this module are pure: they take a result matrix ``R`` and return
Python floats (or ``None`` where the metric is undefined for the protocol).

``R`` has shape ``(S, T)``: row ``i`` holds the evaluation of every task after training
stage ``i`` and column ``j`` belongs to task ``j``. In the usual sequential protocol
``S == T`` and stage ``i`` trains task ``i``. A joint (multi-task) baseline has a single
row, ``S == 1``; metrics that need the diagonal are then undefined and return ``None``.

Conventions follow Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
Learning" (2017) for average accuracy, backward transfer (BWT) and forward transfer
(FWT), and Chaudhry et al., "Riemannian Walk for Incremental Learning" (2018) for
average forgetting.

NaN handling:
    NaN entries mean "not evaluated". Every average skips the terms that involve a NaN
    entry and averages the remaining ones; a maximum/minimum over earlier stages ignores
    NaN entries. If *no* term is left the result is ``float("nan")`` (the metric is
    defined for the protocol but there is no data), as opposed to ``None`` (the metric is
    undefined for the protocol, e.g. a non-square matrix).

Lower-is-better metrics (e.g. perplexity):
    Pass ``higher_is_better=False``. Average and learning metrics are plain means either
    way. BWT and FWT keep the raw difference formulas, so for perplexity their sign is
    flipped with respect to accuracy: a *negative* BWT/FWT is good (perplexity went down)
    and a *positive* one is bad. Forgetting is re-oriented so that a positive value
    always means "the model forgot": ``R[T-1, j] - min_{j<=l<T-1} R[l, j]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from clight.functional._matrix import _as_initial, _as_matrix, _is_square_sequence, _nan_mean

MatrixLike = torch.Tensor | Sequence[Sequence[float]]
"""A result matrix: a 2-D tensor/array or a nested list of floats, shape ``(S, T)``."""

VectorLike = torch.Tensor | Sequence[float]
"""A row of per-task values: a 1-D tensor/array or a list of floats, shape ``(T,)``."""

SUMMARY_KEYS: tuple[str, ...] = ("average", "bwt", "fwt", "forgetting", "learning")
"""Keys of the dictionary returned by :func:`summarize`, in order."""

__all__ = [
    "SUMMARY_KEYS",
    "retention",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forward_transfer",
    "learning_accuracy",
    "summarize",
]


# --------------------------------------------------------------------------- metrics


def average_accuracy(R: MatrixLike, higher_is_better: bool = True) -> float:
    """Average final performance over all tasks (Lopez-Paz & Ranzato, 2017).

    Formula::

        ACC = 1/T * sum_{j=0}^{T-1} R[S-1, j]

    Defined for any ``S >= 1`` (including a single joint-training row). Despite the name
    it is simply the mean of the last row, so for perplexity it is the average final
    perplexity.

    Args:
        R: Result matrix of shape ``(S, T)``.
        higher_is_better: Accepted for a uniform API; the formula does not depend on it.

    Returns:
        The mean of the last row, ignoring NaN entries (``nan`` if all are NaN).

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix.
    """
    mat = _as_matrix(R)
    return _nan_mean(mat[-1])


def backward_transfer(R: MatrixLike, higher_is_better: bool = True) -> float | None:
    """Backward transfer, BWT (Lopez-Paz & Ranzato, 2017).

    Formula::

        BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T-1, j] - R[j, j])

    For higher-is-better metrics a negative BWT means forgetting. For lower-is-better
    metrics (perplexity) the raw difference is kept, so a *positive* BWT means
    forgetting (final perplexity is higher than right after learning the task).

    Args:
        R: Result matrix of shape ``(S, T)``.
        higher_is_better: Accepted for a uniform API; the formula does not depend on it.

    Returns:
        BWT averaged over the terms without NaN (``nan`` if none), or ``None`` if
        ``S != T`` or ``T < 2``.

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix.
    """
    mat = _as_matrix(R)
    if not _is_square_sequence(mat):
        return None
    last = mat.shape[1] - 1
    terms = mat[last, :last] - torch.diagonal(mat)[:last]
    return _nan_mean(terms)


def forward_transfer(
    R: MatrixLike, initial: VectorLike | None, higher_is_better: bool = True
) -> float | None:
    """Forward transfer, FWT (Lopez-Paz & Ranzato, 2017).

    Formula::

        FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j-1, j] - b[j])

    where ``b`` (``initial``) is the row of results of the model before any training.
    For higher-is-better metrics a positive FWT means earlier tasks helped the unseen
    task; for lower-is-better metrics (perplexity) the raw difference is kept, so a
    *negative* FWT is the beneficial direction.

    Args:
        R: Result matrix of shape ``(S, T)``.
        initial: Results of the untrained model, shape ``(T,)``, or ``None``.
        higher_is_better: Accepted for a uniform API; the formula does not depend on it.

    Returns:
        FWT averaged over the terms without NaN (``nan`` if none), or ``None`` if
        ``S != T``, ``T < 2`` or ``initial`` is ``None``.

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix or ``initial`` does not have
            shape ``(T,)``.
    """
    mat = _as_matrix(R)
    if initial is None:
        return None
    base = _as_initial(initial, mat.shape[1])
    if not _is_square_sequence(mat):
        return None
    # Superdiagonal: R[j-1, j] for j = 1 .. T-1.
    terms = torch.diagonal(mat, offset=1) - base[1:]
    return _nan_mean(terms)


def average_forgetting(R: MatrixLike, higher_is_better: bool = True) -> float | None:
    """Average forgetting (Chaudhry et al., 2018), restricted to stages after learning.

    Higher is better (accuracy)::

        F = 1/(T-1) * sum_{j=0}^{T-2} (max_{j <= l < T-1} R[l, j] - R[T-1, j])

    Lower is better (perplexity)::

        F = 1/(T-1) * sum_{j=0}^{T-2} (R[T-1, j] - min_{j <= l < T-1} R[l, j])

    The best value is taken only over stages ``l >= j``, i.e. after task ``j`` has been
    trained: a task cannot be forgotten before it was learned. In both cases a positive
    value means the model forgot; a negative value means it kept improving. The value is
    not clamped at zero.

    Args:
        R: Result matrix of shape ``(S, T)``.
        higher_is_better: Orientation of the metric stored in ``R``.

    Returns:
        Forgetting averaged over the tasks whose terms are not NaN (``nan`` if none), or
        ``None`` if ``S != T`` or ``T < 2``.

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix.
    """
    mat = _as_matrix(R)
    if not _is_square_sequence(mat):
        return None
    last = mat.shape[1] - 1
    terms = torch.empty(last, dtype=torch.float64)
    for j in range(last):
        history = mat[j:last, j]
        history = history[~torch.isnan(history)]
        if history.numel() == 0:
            terms[j] = math.nan
        elif higher_is_better:
            terms[j] = history.max() - mat[last, j]
        else:
            terms[j] = mat[last, j] - history.min()
    return _nan_mean(terms)


def learning_accuracy(R: MatrixLike, higher_is_better: bool = True) -> float | None:
    """Learning accuracy: mean performance on each task right after training it.

    Formula::

        LA = 1/T * sum_{j=0}^{T-1} R[j, j]

    For perplexity it is the average perplexity right after learning each task.

    Args:
        R: Result matrix of shape ``(S, T)``.
        higher_is_better: Accepted for a uniform API; the formula does not depend on it.

    Returns:
        The mean of the diagonal, ignoring NaN entries (``nan`` if all are NaN), or
        ``None`` if ``S != T``.

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix.
    """
    mat = _as_matrix(R)
    if mat.shape[0] != mat.shape[1]:
        return None
    return _nan_mean(torch.diagonal(mat))


def summarize(
    R: MatrixLike, initial: VectorLike | None = None, higher_is_better: bool = True
) -> dict[str, float | None]:
    """Computes every summary metric at once.

    The keys are always ``"average"``, ``"bwt"``, ``"fwt"``, ``"forgetting"`` and
    ``"learning"`` (see :data:`SUMMARY_KEYS`), whatever the metric, so that the
    ``results.json`` schema does not depend on it. For perplexity ``"average"`` is the
    average final perplexity and ``"learning"`` the average perplexity right after
    learning each task.

    Args:
        R: Result matrix of shape ``(S, T)``.
        initial: Results of the untrained model, shape ``(T,)``; ``None`` leaves
            ``"fwt"`` undefined.
        higher_is_better: Orientation of the metric stored in ``R``.

    Returns:
        A dictionary mapping each key of :data:`SUMMARY_KEYS` to a float, ``nan`` (no
        data) or ``None`` (undefined for this protocol).

    Raises:
        ValueError: If ``R`` is not a non-empty 2-D matrix or ``initial`` does not have
            shape ``(T,)``.

    Example:
        >>> R = [[0.9, 0.2, 0.1],
        ...      [0.7, 0.8, 0.3],
        ...      [0.6, 0.7, 0.9]]
        >>> s = summarize(R, initial=[0.1, 0.1, 0.1])
        >>> {k: round(v, 4) for k, v in s.items()}
        {'average': 0.7333, 'bwt': -0.2, 'fwt': 0.15, 'forgetting': 0.2, 'learning': 0.8667}
        >>> summarize([[0.6, 0.7, 0.9]])["bwt"] is None
        True
    """
    mat = _as_matrix(R)
    return {
        "average": average_accuracy(mat, higher_is_better),
        "bwt": backward_transfer(mat, higher_is_better),
        "fwt": forward_transfer(mat, initial, higher_is_better),
        "forgetting": average_forgetting(mat, higher_is_better),
        "learning": learning_accuracy(mat, higher_is_better),
    }


def retention(initial: float | None, final: float | None, higher_is_better: bool = True) -> float | None:
    """The share of a probe's initial score that the final model keeps: ``final / initial`` (``initial / final``
    for a lower-is-better metric such as perplexity), so 1 is kept, below 1 lost, above 1 gained. ``None`` when
    either value is missing or not finite, or the denominator is not positive."""
    if initial is None or final is None or not (math.isfinite(initial) and math.isfinite(final)):
        return None
    num, den = (final, initial) if higher_is_better else (initial, final)
    return num / den if den > 0 else None
