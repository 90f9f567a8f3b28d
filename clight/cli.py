"""``clight`` console script: LightningCLI whose ``fit`` runs the whole task stream.

Usage::

    clight fit -c configs/quickstart.yaml
    clight fit -c configs/quickstart.yaml --trainer.max_epochs 2 --stream.run_dir runs/try2
    clight fit -c configs/quickstart.yaml --resume        # continue a killed run where it stopped
    clight fit -c configs/quickstart.yaml --print_config  # the resolved config
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI, instantiate_class

from clight.errors import ClightConfigError
from clight.module import ContinualModule
from clight.runner import StreamOptions, StreamRunner


class _QuietTrainerBanner(logging.Filter):
    """Every task builds a fresh Trainer; print the hardware banner once, not once per task."""

    _seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith(("GPU available", "TPU available", "HPU available", "💡 Tip")):
            if msg in self._seen:
                return False
            self._seen.add(msg)
        return True


class ContinualCLI(LightningCLI):
    """LightningCLI for task streams: ``model`` is a :class:`~clight.module.ContinualModule`, ``data`` any
    continual datamodule (``class_path``), ``trainer.callbacks`` the CL techniques, and ``stream`` the run
    options (:class:`~clight.runner.StreamOptions`)."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        from clight.datamodules import ContinualDataModule

        kwargs.setdefault("save_config_callback", None)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", {"logger": False, "log_every_n_steps": 5})
        kwargs.setdefault("parser_kwargs", {"description": "Continual fine-tuning of pretrained models."})
        super().__init__(ContinualModule, ContinualDataModule, subclass_mode_data=True, args=args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # only `fit` trains a stream
        return {"fit": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_class_arguments(StreamOptions, "stream")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # LightningCLI's own Trainer (never fitted by clight) appends its defaults - ModelCheckpoint, progress bar,
        # model summary - to the callback list it is given; hand it a copy, so that the user's list, which every
        # task's Trainer gets, stays the user's.
        return super()._instantiate_trainer({**config, "callbacks": list(config.get("callbacks") or [])}, callbacks)

    def stream_trainer_kwargs(self) -> dict[str, Any]:
        """The ``trainer`` section as keyword arguments for the stream's fresh Trainers."""
        kwargs = dict(self._get(self.config_init, "trainer", default={}))
        section = self.config[self.subcommand] if self.subcommand else self.config
        strategy = section["trainer"].get("strategy") if section.get("trainer") else None
        if getattr(strategy, "class_path", None):
            # A strategy given as a class (e.g. ModelParallelStrategy with its sizes) was bound to the accelerator
            # of the Trainer LightningCLI built; the stream's Trainers need an unbound instance.
            kwargs["strategy"] = instantiate_class((), strategy.as_dict())
        return kwargs

    def fit(self, model: ContinualModule, datamodule: Any = None, ckpt_path: str | None = None, **_: Any) -> None:
        if ckpt_path is not None:
            raise ClightConfigError(
                "`--ckpt_path` is not used by `clight fit`: the stream checkpoint lives in `stream.run_dir`; "
                "rerun the same command with `--resume` to continue."
            )
        config = self.config[self.subcommand]
        trainer_kwargs = self.stream_trainer_kwargs()
        options = StreamOptions(**dict(config["stream"]))
        config_text = self._parser(self.subcommand).dump(config, skip_none=False)
        seed = config.get("seed_everything")
        runner = StreamRunner(trainer_kwargs, options, seed=int(seed) if isinstance(seed, int) else 0,
                              config_text=config_text)
        self.results = runner.run(model, datamodule)


def quiet_warnings() -> None:
    """Silence the warnings that clight's own design triggers (set by the ``clight`` command only, never on
    import): the runner evaluates with explicit loaders after each task, so `fit` has no val loader by design;
    and the train loader *is* resumable mid-epoch (`ResumableBatchSampler` skips the trained batches), which
    Lightning cannot see."""
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``clight fit``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_warnings()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_QuietTrainerBanner())
    if args is None:  # rewrite in place: DDP ranks re-run sys.argv
        sys.argv[1:] = ["--stream.resume=true" if a == "--resume" else a for a in sys.argv[1:]]
    else:
        args = ["--stream.resume=true" if a == "--resume" else a for a in args]
    try:
        ContinualCLI(args=args)
    except ClightConfigError as err:
        print(f"clight: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
