"""What the masking callbacks share: the freezing callbacks' (FreezeParameters, HalfFineTuning) frozen sets, one per
callback and applied together, so that two callbacks never unfreeze each other's parameters; and the per-step
buffers of GradientMask, allocated once and reused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clight.errors import ClightConfigError
from clight.functional.masking import magnitude_thresholds, normalize_name
from clight.sharding import gather_pieces, is_dtensor, shard_rank


def set_frozen(module: nn.Module, owner: str, names: set[str]) -> tuple[int, int]:
    """Make ``owner``'s frozen set ``names`` (normalized parameter names) and apply every owner's set.

    Several callbacks may freeze parameters of one module (``FreezeParameters``, ``HalfFineTuning``); each owns
    its set, and a parameter is frozen while any owner freezes it. Only parameters that these owners froze are
    ever unfrozen again, so parameters frozen by someone else (a peft base model) stay frozen. Returns the
    number of frozen and of all parameter tensors."""
    owners: dict[str, set[str]] = module.__dict__.setdefault("_clight_frozen_by", {})
    flipped: set[str] = module.__dict__.setdefault("_clight_frozen_flipped", set())
    owners[owner] = set(names)
    frozen = set().union(*owners.values())
    count = total = 0
    for raw, param in module.named_parameters():
        name = normalize_name(raw)
        total += 1
        if name in frozen:
            if param.requires_grad:
                param.requires_grad_(False)
                flipped.add(name)
            count += 1
        elif name in flipped:
            param.requires_grad_(True)
            flipped.discard(name)
    return count, total


def mask_scope(pl_module: nn.Module, head: set[str]) -> list[tuple[str, nn.Parameter]]:
    """GradientMask's masked parameters: the trainable ones outside ``head`` (normalized names), by name."""
    out = []
    for raw, p in pl_module.named_parameters():
        name = normalize_name(raw)
        if p.requires_grad and name not in head:
            if not p.is_contiguous():
                raise ClightConfigError(f"`GradientMask` needs contiguous parameters; {name!r} is not.")
            out.append((name, p))
    return out


def reused_buffer(store: dict[str, Tensor], name: str, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``store[name]``, (re)allocated like ``like`` when missing or of another shape: per-step buffers are
    allocated once per fit, not once per step."""
    buf = store.get(name)
    if buf is None or buf.shape != like.shape:
        buf = store[name] = torch.empty_like(like, dtype=dtype)
    return buf


@dataclass
class MaskFitState:
    """GradientMask's device state for one fit (rebuilt at every fit start, dropped at its end)."""

    scope: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # the masked parameters, by name
    index: dict[str, Tensor] = field(default_factory=dict)  # fixed masks as sorted flat indices on the device
    buffers: dict[str, Tensor] = field(default_factory=dict)  # stash buffers
    flags: dict[str, Tensor] = field(default_factory=dict)  # magnitude: "gradient is zero" buffers
    dense: dict[str, Tensor] = field(default_factory=dict)  # path importance: the weights before the step
    shards: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # FSDP2: every rank's run of each
    handles: list[Any] = field(default_factory=list)  # the optimizers' step post-hooks


def thresholds(live: list[tuple[str, nn.Parameter]], grads: list[Tensor], fraction: float, scope: str,
               sample_size: int, shards: dict[str, list[tuple[int, int]]]) -> list[float]:
    """GradientMask's magnitude thresholds of the full gradients of ``live`` (under FSDP2 from every rank's share
    of the strided sample, one ``all_gather``; ``shards`` holds every rank's run of each parameter)."""
    first = live[0][1]
    if not is_dtensor(first):
        return magnitude_thresholds(grads, fraction, scope, sample_size)
    group = first.device_mesh.get_group()
    return magnitude_thresholds(grads, fraction, scope, sample_size, shards=[shards[n] for n, _ in live],
                                rank=shard_rank(first), gather=lambda pieces, counts: gather_pieces(pieces, counts, group))
