"""``clight`` console script: LightningCLI whose ``fit`` runs the whole task stream.

Usage::

    clight fit -c configs/quickstart.yaml
    clight fit -c configs/quickstart.yaml --trainer.max_epochs 2 --stream.run_dir runs/try2
    clight fit -c configs/quickstart.yaml --resume        # continue a killed run where it stopped
    clight fit -c configs/quickstart.yaml --print_config  # the resolved config
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, instantiate_class
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from clight.errors import ClightConfigError
from clight.fingerprint import config_fingerprint
from clight.module import ContinualModule
from clight.options import StreamOptions, check_callbacks, check_trainer_kwargs
from clight.print_config import print_runner_config, split_print_config
from clight.run_folder import check_run_dir
from clight.runner import StreamRunner


class _QuietTrainerBanner(logging.Filter):
    """Every task builds a fresh Trainer; print the hardware banner once, not once per task, and neither the
    Trainer's "stopped: max_epochs reached" at each task's end (it broke the task's bar) nor Lightning's
    advertisement for its cloud logger (clight logs to TensorBoard)."""

    _seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("💡 Tip") and "litlogger" in msg:
            return False
        if msg.startswith("`Trainer.fit` stopped:"):  # every task's Trainer stops at its budget, by design
            return False
        if msg.startswith(("GPU available", "TPU available", "HPU available")):
            if msg in self._seen:
                return False
            self._seen.add(msg)
        return True


class ContinualCLI(LightningCLI):
    """LightningCLI for task streams: ``model`` is a :class:`~clight.module.ContinualModule`, ``data`` any
    continual datamodule (``class_path``), ``trainer.callbacks`` the CL techniques, and ``stream`` the run
    options (:class:`~clight.runner.StreamOptions`). A subclass may set :attr:`stage_hook`, the runner's
    per-task hook (:class:`~clight.runner.StreamRunner`), as ``clight tune`` does to score and prune trials."""

    stage_hook = None

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        import clight.callbacks  # noqa: F401  (every technique known by its short name: `--trainer.callbacks+=EWC`)
        from clight.datamodules import ContinualDataModule

        kwargs.setdefault("save_config_callback", None)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("trainer_defaults", {"logger": False, "log_every_n_steps": 5, "use_distributed_sampler": False,
                                               "num_sanity_val_steps": 0})
        # parser errors are raised (and printed as one line by `main`), not printed with the whole usage
        kwargs.setdefault("parser_kwargs", {"description": "Continual fine-tuning of pretrained models.",
                                            "exit_on_error": False, "fit": {"exit_on_error": False}})
        super().__init__(ContinualModule, ContinualDataModule, subclass_mode_data=True, args=args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # only `fit` trains a stream
        return {"fit": {"model", "datamodule"}}

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """``--print_config`` prints the config as every task's Trainer will get it (:mod:`clight.print_config`)."""
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else None
        kept, flags = split_print_config(argv) if argv is not None else (None, None)
        if flags is None:
            return super().parse_arguments(parser, args)
        self.config = parser.parse_args(kept)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return super().parse_arguments(parser, args)
        check_trainer_kwargs(self.config[subcommand]["trainer"].as_dict())
        print_runner_config(self._parser(subcommand), self.config[subcommand], flags)
        raise SystemExit(0)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_class_arguments(StreamOptions, "stream")

    def before_instantiate_classes(self) -> None:
        """The checks that need no model: the trainer's budgets and devices, the stream options and the run folder
        (before LightningCLI loads the model and reads the data)."""
        if self.subcommand != "fit":
            return
        section = self.config[self.subcommand]
        check_trainer_kwargs(section["trainer"].as_dict() if section.get("trainer") else {})
        options = StreamOptions(**dict(section["stream"]))
        if options.checkpoint_every_n_steps < 0:
            raise ClightConfigError(
                f"`stream.checkpoint_every_n_steps` must be >= 0, got {options.checkpoint_every_n_steps}.")
        # a subclass that overrides `fit` only builds the objects (`clight evaluate` rebuilds a finished run)
        if rank_zero_only.rank == 0 and type(self).fit is ContinualCLI.fit:
            check_run_dir(Path(options.run_dir), resume=options.resume, overwrite=options.overwrite)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        check_callbacks([*(config.get("callbacks") or []), *callbacks])
        # LightningCLI's own Trainer (never fitted by clight) appends its defaults - ModelCheckpoint, progress bar,
        # model summary - to the callback list it is given; hand it a copy, so that the user's list, which every
        # task's Trainer gets, stays the user's.
        try:
            return super()._instantiate_trainer({**config, "callbacks": list(config.get("callbacks") or [])},
                                                callbacks)
        except MisconfigurationException as err:
            raise ClightConfigError(f"`trainer`: {' '.join(str(err).split())}") from err

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
                              config_text=config_text, run_fingerprint=config_fingerprint(config),
                              stage_hook=self.stage_hook)
        self.results = runner.run(model, datamodule)


def quiet_warnings() -> None:
    """Silence the warnings that clight's own design triggers (set by the ``clight`` command only, never on
    import): the runner evaluates with explicit loaders after each task, so `fit` has no val loader by design;
    and the train loader *is* resumable mid-epoch (`ResumableBatchSampler` skips the trained batches), which
    Lightning cannot see. And Lightning's own batch flattening builds torch's deprecated ``LeafSpec`` at every step
    (torch >= 2.10), which the user can do nothing about."""
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


def _config_files(args: Sequence[str]) -> list[str]:
    """The files of the ``-c``/``--config`` arguments (a value that is YAML text rather than a path is left out)."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if "\n" not in value and not value.lstrip().startswith(("{", "[")):
            files.append(value)
    return files


def check_config_files(args: Sequence[str]) -> None:
    """Every ``--config`` file exists and is YAML, or a one-line error names the file (and the line)."""
    import yaml

    for name in _config_files(args):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ClightConfigError(
                f"`--config`: config file {name!r} does not exist (paths are relative to {os.getcwd()}); give a YAML "
                "file such as `configs/quickstart.yaml`."
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ClightConfigError(f"`--config`: {name!r} is not a text file ({err.reason}).") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ClightConfigError(f"`--config`: {name!r}{where}: not valid YAML ({problem}); fix the file.") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ClightConfigError(
                f"`--config`: {name!r} holds a YAML {type(loaded).__name__}, not a mapping of sections (`model:`, "
                "`data:`, `trainer:`, `stream:`)."
            )


_NOISE = re.compile(r"^\s*(-\s*)?(Subtypes:|Given value type:|Given value:|Errors:|Does not validate against any of "
                    r"the Union subtypes|Expected a <class 'NoneType'>)")


def parser_error_line(message: str) -> str:
    """jsonargparse's multi-line parser error as one line: the key, then what was wrong, without the union
    alternatives and the repeated value."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    key = None
    if lines and (found := re.match(r'^Parser key "([^"]+)":\s*(.*)$', lines[0])):
        key, rest = found.groups()
        lines = [rest, *lines[1:]] if rest else lines[1:]
    kept = []
    for line in lines:
        if _NOISE.match(line):
            continue
        line = re.sub(r"^-\s*", "", line)
        if line not in kept:
            kept.append(line)
    text = re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", " ".join(kept))
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text).rstrip(".")
    if len(text) > 300:
        text = text[:297] + "..."
    head = f"`{key}`: " if key else ""
    return f"{head}{text or 'invalid value'}. `clight fit --help` lists the options."


def error_line(err: BaseException) -> str | None:
    """The one line to print for a failed ``clight fit`` (None: a bug, keep its traceback): a
    :class:`ClightConfigError`, also inside the exception jsonargparse wraps it in, or a parser error."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ClightConfigError):
            return " ".join(str(cause).split())
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, argparse.ArgumentError):
        return parser_error_line(err.message if hasattr(err, "message") else str(err))
    return None


def command_setup() -> None:
    """What every command that runs ``clight fit`` sets first (``clight fit``, ``clight tune``'s in-process
    trials): offline hub, quiet tokenizers, and none of the warnings and banners clight's design triggers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_warnings()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _QuietTrainerBanner) for f in logger.filters):
        logger.addFilter(_QuietTrainerBanner())


def main(args: list[str] | None = None) -> None:
    """Entry point of ``clight fit``."""
    command_setup()
    if args is None:  # rewrite in place: DDP ranks re-run sys.argv
        sys.argv[1:] = ["--stream.resume=true" if a == "--resume" else a for a in sys.argv[1:]]
    else:
        args = ["--stream.resume=true" if a == "--resume" else a for a in args]
    try:
        check_config_files(sys.argv[1:] if args is None else args)
        ContinualCLI(args=args)
    except Exception as err:
        line = error_line(err)
        if line is None:
            raise
        print(f"clight: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
