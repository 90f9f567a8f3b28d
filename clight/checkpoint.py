"""The stream checkpoint ``stream.pt``: what a finished task leaves for a resume (the state of the stream, the
module's weights, every continual callback's state, and the stream's fingerprint)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from clight.callback import ContinualCallback
from clight.errors import ClightConfigError
from clight.sharding import gather_full

STREAM_CHECKPOINT = "stream.pt"
FORMAT_VERSION = 2  # 2: task heads (`head.linear.*`), StreamState


def callback_key(cb: ContinualCallback) -> str:
    """The name a callback's state is saved under (its ``state_key``)."""
    return getattr(cb, "state_key", type(cb).__qualname__)


def module_checkpoint_state(module: pl.LightningModule) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The module's weights for the stream checkpoint (CPU tensors): adapter-only for a peft
    :class:`~clight.module.ContinualModule` (see its ``checkpoint_state``), else the full state dict."""
    if hasattr(module, "checkpoint_state"):
        state, base = module.checkpoint_state()
        return gather_full(state), base
    return {k: v.detach().cpu() for k, v in gather_full(module.state_dict()).items()}, None


def load_module_state(module: pl.LightningModule, state: dict[str, torch.Tensor], base: dict[str, Any] | None) -> None:
    """Load what :func:`module_checkpoint_state` wrote (rebuilding adapters and checking the rebuilt base)."""
    if hasattr(module, "restore_checkpoint_state"):
        state = module.restore_checkpoint_state(state, base)
    module.load_state_dict(state)


def callback_states(callbacks: Sequence[ContinualCallback]) -> dict[str, Any]:
    """Every callback's state, full tensors (under FSDP2 a gather on every rank)."""
    return {callback_key(cb): gather_full(cb.state_dict()) for cb in callbacks}


def write_stream_checkpoint(run_dir: Path, payload: Mapping[str, Any]) -> None:
    """Write ``run_dir/stream.pt`` atomically: to a temporary file beside it, then renamed over it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (STREAM_CHECKPOINT + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)
    tmp.replace(run_dir / STREAM_CHECKPOINT)


def read_stream_checkpoint(path: Path, *, argument: str = "--stream.resume") -> dict[str, Any]:
    """Load a stream checkpoint (``weights_only``), refusing one of another format version by name."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    version = saved.get("format_version")
    if version != FORMAT_VERSION:
        raise ClightConfigError(
            f"`{argument}`: {str(path)!r} was written by another clight version (checkpoint format "
            f"{version}, this clight writes {FORMAT_VERSION}); it cannot be resumed. Start afresh with "
            "`--stream.overwrite true` or a new `--stream.run_dir`."
        )
    return saved


def restore_callbacks(saved: Mapping[str, Any], callbacks: Sequence[ContinualCallback]) -> None:
    """Load every callback's state from a stream checkpoint, naming a callback the checkpoint does not hold."""
    for cb in callbacks:
        key = callback_key(cb)
        if key not in saved["callbacks"]:
            raise ClightConfigError(
                f"`--stream.resume`: the checkpoint has no state for callback {key!r}; resume with the "
                f"callbacks of the original run ({sorted(saved['callbacks'])})."
            )
        cb.load_state_dict(saved["callbacks"][key])
