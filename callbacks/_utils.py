"""Helpers every technique family shares: argument checks, seeded generators, the trainable parameters and the
output head, eval mode for a model pass inside training, and the split of a list over ranks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from clight.contracts import HasOutputHead
from clight.errors import ClightConfigError
from clight.functional.masking import normalize_name


def check_arg(ok: bool, name: str, constraint: str, value: Any, fix: str) -> None:
    """Raise :class:`ClightConfigError` naming the argument, the constraint, the value and a fix."""
    if not ok:
        raise ClightConfigError(f"`{name}` must be {constraint}, got {value!r}. {fix}")


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers, e.g. ``(seed, task_index, step)``."""
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(state)


def trainable_parameters(pl_module: nn.Module) -> dict[str, nn.Parameter]:
    """The module's parameters that train (``requires_grad``), by name."""
    return {name: p for name, p in pl_module.named_parameters() if p.requires_grad}


def output_head(pl_module: nn.Module) -> nn.Module | None:
    """The module's output head, as its ``output_head()`` declares it (:class:`~clight.contracts.HasOutputHead`);
    ``None`` for a module that declares none."""
    return pl_module.output_head() if isinstance(pl_module, HasOutputHead) else None


def head_parameters(pl_module: nn.Module) -> dict[str, nn.Parameter]:
    """The output head's parameters by their names in ``pl_module``; empty without a head."""
    head = output_head(pl_module)
    ids = {id(p) for p in head.parameters()} if head is not None else set()
    return {n: p for n, p in pl_module.named_parameters() if id(p) in ids}


def head_parameter_names(pl_module: nn.Module) -> set[str]:
    """Normalized names (:func:`~clight.functional.masking.normalize_name`) of the output head's parameters."""
    return {normalize_name(n) for n in head_parameters(pl_module)}


def head_rows(pl_module: nn.Module) -> dict[str, int]:
    """The names of a linear output head's parameters mapped to their class dimension (0: one row per class);
    empty for a module whose head is not an ``nn.Linear``."""
    return {n: 0 for n in head_parameters(pl_module)} if isinstance(output_head(pl_module), nn.Linear) else {}


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Switch ``module`` to eval mode (dropout off) for a pass inside training, and restore every submodule's own
    mode afterwards: a backbone may be in eval mode while its head trains, and ``train()`` on the root would
    switch the backbone's dropout on."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def rank_share(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items split over ``world`` ranks: ``ceil(n / world)`` each, the
    last share shorter (or empty)."""
    per = -(-n // world)
    return range(min(rank * per, n), min((rank + 1) * per, n))
