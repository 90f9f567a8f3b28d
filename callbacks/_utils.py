"""Helpers every technique family shares: argument checks, seeded generators, the trainable parameters and the
output head, eval mode for a model pass inside training, and the split of a list over ranks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
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


def output_head(pl_module: nn.Module, head: str | None = None) -> nn.Module | None:
    """The module's output head: the submodule named ``head`` (a callback's ``head`` argument) when given, else
    what the module's ``output_head()`` declares (:class:`~clight.contracts.HasOutputHead`); ``None`` for a module
    that declares none. The head is never guessed from attribute names."""
    if head is not None:
        return resolve_head(pl_module, head)
    return pl_module.output_head() if isinstance(pl_module, HasOutputHead) else None


def resolve_head(pl_module: nn.Module, head: str) -> nn.Module:
    """The submodule ``head`` (a dotted name) of ``pl_module``; a name that is none raises
    :class:`ClightConfigError` naming the module's top-level submodules."""
    try:
        return pl_module.get_submodule(head)
    except AttributeError:
        children = [n for n, _ in pl_module.named_children()]
        raise ClightConfigError(
            f"`head` must name a submodule of `{type(pl_module).__name__}` (its output layer), got {head!r}; its "
            f"top-level submodules are {children}. Give the dotted name (e.g. `head: classifier`), or leave `head` "
            "empty and declare `output_head()` on the module."
        ) from None


def head_parameters(pl_module: nn.Module, head: str | None = None) -> dict[str, nn.Parameter]:
    """The output head's parameters by their names in ``pl_module``; empty without a head."""
    module = output_head(pl_module, head)
    ids = {id(p) for p in module.parameters()} if module is not None else set()
    return {n: p for n, p in pl_module.named_parameters() if id(p) in ids}


def head_parameter_names(pl_module: nn.Module, head: str | None = None) -> set[str]:
    """Normalized names (:func:`~clight.functional.masking.normalize_name`) of the output head's parameters."""
    return {normalize_name(n) for n in head_parameters(pl_module, head)}


def head_rows(pl_module: nn.Module, head: str | None = None) -> dict[str, int]:
    """The names of a linear output head's parameters mapped to their class dimension (0: one row per class);
    empty for a module whose head is not an ``nn.Linear``."""
    linear = isinstance(output_head(pl_module, head), nn.Linear)
    return {n: 0 for n in head_parameters(pl_module, head)} if linear else {}


def check_head_arg(head: str | None) -> None:
    """Validate a callback's ``head`` argument in ``__init__`` (its submodule is checked in ``setup``)."""
    check_arg(head is None or (isinstance(head, str) and head.strip() != ""), "head",
              "empty or the dotted name of the output layer's submodule", head,
              "E.g. `head: classifier`; leave it empty to use the module's `output_head()`.")


def check_head(pl_module: nn.Module, head: str | None, who: str) -> None:
    """In ``setup``: resolve a ``head`` argument (a bad name raises), or warn once when a module declares no head
    at all, so that a classifier is not silently frozen or masked like any other layer."""
    if head is not None:
        resolve_head(pl_module, head)
    elif not isinstance(pl_module, HasOutputHead):
        rank_zero_warn(f"`{who}`: `{type(pl_module).__name__}` declares no output head, so its classifier (if any) "
                       "is treated like every other layer. Declare `output_head()` on the module or give "
                       "`head: <submodule name>`.")


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
