"""Rebuild a ``clight fit`` run from its folder: its module, stream and continual callbacks from ``config.yaml``,
the state of its last finished task from ``stream.pt`` (what ``clight export`` and ``clight evaluate`` start from)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from clight.callback import ContinualCallback
from clight.checkpoint import STREAM_CHECKPOINT, load_module_state, read_stream_checkpoint, restore_callbacks
from clight.errors import ClightConfigError
from clight.module import ContinualModule
from clight.stream import prepare_stream


def build_from_config(config: str | Path) -> tuple[ContinualModule, Any, list[ContinualCallback]]:
    """The module, datamodule and continual callbacks a config describes, built on the CPU (nothing trained).

    Data paths in the config are relative to where the run was started: call this from the same folder."""
    from clight.cli import ContinualCLI

    path = Path(config)
    if not path.is_file():
        raise ClightConfigError(f"config {str(path)!r} does not exist: give a `clight fit` config or a run's config.yaml.")

    class _Build(ContinualCLI):
        def fit(self, model: Any, datamodule: Any = None, **_: Any) -> None:
            callbacks = self.stream_trainer_kwargs().get("callbacks") or []
            self.built = (model, datamodule, [cb for cb in callbacks if isinstance(cb, ContinualCallback)])

    with warnings.catch_warnings():  # a script calling this has its own sys.argv, which LightningCLI warns about
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = _Build(args=["fit", "-c", str(path), "--trainer.accelerator=cpu", "--trainer.devices=1",
                           "--trainer.strategy=auto", "--trainer.logger=false", "--trainer.num_nodes=1"])
    return cli.built


def load_run(run_dir: str | Path, *, callbacks: bool = False
             ) -> tuple[ContinualModule, Any, dict[str, Any]] | tuple[ContinualModule, Any, dict[str, Any], list]:
    """Rebuild the module of a ``clight fit`` run from ``run_dir/config.yaml`` and load the weights of its last
    finished task from ``run_dir/stream.pt``. Returns ``(module, datamodule, stream checkpoint)``, and with
    ``callbacks=True`` also the run's continual callbacks with their saved state.

    The module is built on the CPU; a config-built base is rebuilt from the config's seed (checked on load)."""
    run = Path(run_dir)
    config, checkpoint = run / "config.yaml", run / STREAM_CHECKPOINT
    for path in (config, checkpoint):
        if not path.exists():
            raise ClightConfigError(f"{str(path)!r} does not exist: give the `stream.run_dir` of a `clight fit` run.")
    module, datamodule, continual = build_from_config(config)
    prepare_stream(module, datamodule)
    saved = read_stream_checkpoint(checkpoint, argument="run_dir")
    load_module_state(module, saved["module"], saved.get("module_base"))
    if not callbacks:
        return module, datamodule, saved
    restore_callbacks(saved, continual)
    return module, datamodule, saved, continual
