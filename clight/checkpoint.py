"""The run's checkpoints: the stream checkpoint ``stream.pt`` (what a finished task leaves for a resume: the state of
the stream, the module's weights, every continual callback's state, the stream's and the run's fingerprints) and
Lightning's mid-task ``checkpoints/<task>/last.ckpt``.

Every checkpoint is written to a temporary file beside its final path and renamed over it, so a kill or a full
disk leaves the previous checkpoint whole; every one loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from clight.callback import ContinualCallback, is_sharded
from clight.errors import ClightConfigError
from clight.sharding import gather_full

STREAM_CHECKPOINT = "stream.pt"
MID_TASK_CHECKPOINT = "last.ckpt"
FORMAT_VERSION = 2  # 2: task heads (`head.linear.*`), StreamState (a `run` fingerprint may be absent: older runs)
FINGERPRINT_KEY = "clight_fingerprint"  # what a mid-task checkpoint carries: {"run": ..., "stream": ...}
TMP_SUFFIX = ".tmp"


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


class UnreadableCheckpoint(ClightConfigError):
    """A checkpoint file that cannot be loaded (truncated, corrupt, or not a checkpoint)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{str(path)!r} is unreadable ({reason})")


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp`` beside ``path``, fsynced, then renamed over it: a reader sees the previous
    file or the new one, never a part of one. A failed write (a full disk) removes the partial file and leaves the
    previous one in place."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        raise ClightConfigError(
            f"could not write checkpoint {str(path)!r}: {err.strerror or _reason(err)}; {kept}. Free space on "
            "that filesystem (or fix its permissions) and rerun the same command with `--resume`."
        ) from err


def load_checkpoint_file(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with ``weights_only=True``; :class:`UnreadableCheckpoint` if it cannot be
    (``mmap``: map the tensors instead of reading them, to check a large checkpoint cheaply)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise UnreadableCheckpoint(path, f"truncated or corrupt: {_reason(err)}") from err
    if not isinstance(saved, dict):
        raise UnreadableCheckpoint(path, f"holds a {type(saved).__name__}, not a checkpoint")
    return saved


def write_stream_checkpoint(run_dir: Path, payload: Mapping[str, Any]) -> None:
    """Write ``run_dir/stream.pt`` atomically (:func:`save_atomically`)."""
    save_atomically({"format_version": FORMAT_VERSION, **payload}, Path(run_dir) / STREAM_CHECKPOINT)


def read_stream_checkpoint(path: Path, *, argument: str = "--stream.resume") -> dict[str, Any]:
    """Load a stream checkpoint (``weights_only``), refusing a damaged one or one of another format version by
    name, in one line."""
    try:
        saved = load_checkpoint_file(path)
    except UnreadableCheckpoint as err:
        raise ClightConfigError(
            f"`{argument}`: {err}; a stream checkpoint has no earlier copy to fall back to, so this run cannot be "
            "resumed. Start afresh with `--stream.overwrite true` or a new `--stream.run_dir`."
        ) from None
    version = saved.get("format_version")
    if version != FORMAT_VERSION:
        raise ClightConfigError(
            f"`{argument}`: {str(path)!r} was written by another clight version (checkpoint format "
            f"{version}, this clight writes {FORMAT_VERSION}); it cannot be resumed. Start afresh with "
            "`--stream.overwrite true` or a new `--stream.run_dir`."
        )
    return saved


def read_mid_task_fingerprint(path: Path) -> dict[str, Any]:
    """The fingerprints a mid-task checkpoint carries (empty for one written before clight stored them), checking
    that the checkpoint can be loaded: a file (mapped, not read), or the folder of a sharded (distributed)
    checkpoint, complete once its metadata is written. :class:`UnreadableCheckpoint` if it cannot."""
    path = Path(path)
    if path.is_dir():
        meta = path / "meta.pt"  # Lightning writes it after every shard (lightning.fabric.utilities.load)
        if not meta.is_file() or not (path / ".metadata").is_file():
            raise UnreadableCheckpoint(path, "an incomplete sharded checkpoint: its metadata is missing")
        saved = load_checkpoint_file(meta)
    else:
        saved = load_checkpoint_file(path, mmap=True)
    return dict(saved.get(FINGERPRINT_KEY) or {})


def remove_path(path: Path) -> None:
    """Remove a file or a folder, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint IO, writing beside the final path and renaming (Lightning's own goes
    through a temporary file in ``$TMPDIR`` and a move, which on a full target filesystem left a truncated file),
    and loading with ``weights_only=True`` unless told otherwise."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`{type(self).__name__}.save_checkpoint(..., storage_options=...)` is not supported.")
        save_atomically(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)


class MidTaskCheckpoint(Checkpoint):
    """Save Lightning's checkpoint of the running task every ``every_n_steps`` optimizer steps to ``path``, with the
    run's fingerprints. A file goes through :class:`AtomicCheckpointIO`; a sharded (distributed) checkpoint, a
    folder, is written to ``<path>.tmp`` and swapped in once complete. As a ``Checkpoint`` it runs after every
    other callback's ``on_train_batch_end``, as ``ModelCheckpoint`` does, so it saves their updated state."""

    def __init__(self, path: Path, every_n_steps: int, fingerprint: Mapping[str, Any]) -> None:
        super().__init__()
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.fingerprint = dict(fingerprint)
        self._saved_step = 0  # no checkpoint before a step is taken

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if (step % self.every_n_steps or step == self._saved_step or trainer.sanity_checking
                or trainer.fast_dev_run):
            return
        self._saved_step = step
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        if not is_sharded(trainer.strategy):
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: a resume continues from it
            return
        tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        if trainer.is_global_zero:
            remove_path(tmp)
        trainer.strategy.barrier("clight_mid_task_checkpoint_tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            old = self.path.with_name(self.path.name + ".old")
            remove_path(old)
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            remove_path(old)
        trainer.strategy.barrier("clight_mid_task_checkpoint")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprint


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
