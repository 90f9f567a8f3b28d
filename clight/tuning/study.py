"""An Optuna study whose trials are ordinary ``clight fit`` runs, each in its own folder, scored on the validation
matrix; a killed study continues with the trials it had, and a trial killed mid-run resumes from its checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from clight.errors import ClightConfigError
from clight.results import seen_summary
from clight.tuning.objective import objective_value, validation_summary
from clight.tuning.space import Dimension, apply, value_at


def trial_key(values: dict[str, Any]) -> str:
    """The folder name of a trial: a hash of its values, so that the same values (a trial a killed study
    enqueues again) find the same folder and resume its run."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_trial(config: Path, *, resume: bool, extra: Sequence[str], on_stage_end: Callable[[Any, int], None] | None
              ) -> dict[str, Any]:
    """One ``clight fit`` run in this process; ``on_stage_end(state, stage)`` is called after every task's
    evaluation (the pruning hook). Returns its ``results.json`` content."""
    from clight.cli import ContinualCLI

    class _TrialCLI(ContinualCLI):
        stage_hook = staticmethod(on_stage_end) if on_stage_end is not None else None

    args = ["fit", "-c", str(config), "--stream.resume=true" if resume else "--stream.overwrite=true",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]
    with warnings.catch_warnings():  # the trial's arguments are `args`; `clight tune`'s own argv is not for it
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _TrialCLI(args=args).results


def check_validation_split(config: dict[str, Any], path: Path, extra: Sequence[str]) -> None:
    """Refuse, before any trial runs, a config whose stream has no validation split: tuning reads validation data
    only, so that the test numbers stay unbiased."""
    data = config.get("data") or {}
    fraction = (data.get("init_args") or {}).get("val_fraction", data.get("val_fraction"))
    if not fraction and not any("val_fraction" in arg for arg in extra):
        raise ClightConfigError(
            f"`clight tune`: the stream of {str(path)!r} has no validation split, and tuning reads validation data "
            "only (the test sets stay for the final numbers). Add `val_fraction: 0.2` to `data.init_args` (a seeded "
            "share of each task's training examples).")


def run_study(config: Path, space: list[Dimension], *, out: Path, trials: int, objective: str, metric: str | None,
              seed: int = 0, prune: bool = True, extra: Sequence[str] = (), log: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Run (or continue) the study in ``out`` until it has ``trials`` finished trials; write ``out/best.yaml`` (the
    best trial's config, which ``clight fit -c`` takes) and ``out/trials.json``. Returns the summary."""
    import optuna
    from optuna.trial import TrialState

    base = yaml.safe_load(Path(config).read_text())
    apply(base, {d.path: d.low if d.kind != "choice" else d.choices[0] for d in space})  # every path exists
    check_validation_split(base, Path(config), extra)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0) if prune else optuna.pruners.NopPruner()
    # A trial whose process died stops beating; Optuna fails it and runs its values again (RetryFailedTrialCallback),
    # which find the same folder (trial_key) and resume its run from the stream checkpoint.
    storage = _storage(optuna, out / "study.db")
    study = optuna.create_study(study_name="clight", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner, load_if_exists=True)
    # A continued study must not draw the values its first run drew: a fresh sampler replays its seeded random
    # start, so it is seeded past the trials the study already has.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    default = default_values(base, space)
    if default is not None and not any(t.params == default for t in study.trials):
        study.enqueue_trial(default)  # the config's own setting is always a trial: `best` must beat it to differ
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = sum(t.state in finished and t.number not in retried for t in study.trials)

    def objective_fn(trial: Any) -> float:
        values = {d.path: d.suggest(trial) for d in space}
        folder = out / "trials" / trial_key(values)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = apply(base, values)
        cfg.setdefault("stream", {})["run_dir"] = str(folder / "run")
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        trial.set_user_attr("folder", str(folder))

        def report(state: Any, stage: int) -> None:
            if not state.validation:
                return
            name = metric or state.metric_names[0]
            matrix = state.validation[name]
            value = objective_value(seen_summary(matrix), objective, matrix.higher_is_better)
            if math.isfinite(value):
                trial.report(value, stage)
                if trial.should_prune():
                    log(f"clight tune: trial {trial.number} pruned after task {stage + 1} ({value:.4f})")
                    raise optuna.TrialPruned()

        try:
            results = run_trial(folder / "config.yaml", resume=(folder / "run" / "stream.pt").exists(), extra=extra,
                                on_stage_end=report)
            name, summary, higher = validation_summary(results, metric)
        except optuna.TrialPruned:
            raise
        except (Exception, SystemExit) as err:  # recorded in trials.json; Optuna fails the trial, the study goes on
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            log(f"clight tune: trial {trial.number} failed ({type(err).__name__}: {err}); see {folder}")
            if isinstance(err, SystemExit):
                raise RuntimeError(f"the trial's `clight fit` exited with {err.code}") from err
            raise
        value = objective_value(summary, objective, higher)
        trial.set_user_attr("validation", dict(summary))
        trial.set_user_attr("test", dict(results["summary"][name]))  # recorded, never used to choose
        log(f"clight tune: trial {trial.number}: {objective} {value:.4f} with {values}")
        return value

    if trials - done > 0:
        study.optimize(objective_fn, n_trials=trials - done, catch=(Exception,), gc_after_trial=True)
    return write_summary(study, base, space, out, Path(config))


def default_values(config: dict[str, Any], space: list[Dimension]) -> dict[str, Any] | None:
    """The config's own values of the tuned paths, when every one lies inside its dimension (else None)."""
    values = {d.path: value_at(config, d.path) for d in space}
    for d in space:
        v = values[d.path]
        inside = (v in d.choices) if d.kind == "choice" else (
            isinstance(v, (int, float)) and not isinstance(v, bool) and d.low <= v <= d.high)
        if not inside:
            return None
    return values


def _storage(optuna: Any, path: Path) -> Any:
    """The study's SQLite storage, with heartbeats: a trial whose process died is failed and retried."""
    new_api = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")  # Optuna >= 4.9
    retry = (optuna.storages.RetryHeartbeatStaleTrialCallback if new_api else
             optuna.storages.RetryFailedTrialCallback)(max_retry=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{path}", heartbeat_interval=10, grace_period=30,
            **{"heartbeat_stale_trial_callback" if new_api else "failed_trial_callback": retry})


def write_summary(study: Any, base: dict[str, Any], space: list[Dimension], out: Path, config: Path) -> dict[str, Any]:
    """``trials.json`` (every trial: values, state, objective, validation and test summaries, error) and
    ``best.yaml``."""
    from optuna.trial import TrialState

    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "values": t.params,
             "intermediate": dict(t.intermediate_values),
             "validation": t.user_attrs.get("validation"), "test": t.user_attrs.get("test"),
             "folder": t.user_attrs.get("folder"), "error": t.user_attrs.get("error")}
            for t in study.trials]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    summary = {"config": str(config), "trials": rows, "best": None, "default": None}
    if complete:
        best = max(complete, key=lambda t: t.value)
        cfg = apply(base, best.params)
        cfg.setdefault("stream", {})["run_dir"] = f"runs/{config.stem}-tuned"
        header = (f"# {config.name} with the values `clight tune` chose (trial {best.number} of {len(study.trials)}; "
                  f"validation objective {best.value:.4f}):\n"
                  + "".join(f"#   {k}: {v}\n" for k, v in best.params.items()))
        (out / "best.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        summary["best"] = {"number": best.number, "value": best.value, "values": best.params}
        default = default_values(base, space)
        same = [t for t in complete if default is not None and t.params == default]
        summary["default"] = ({"number": same[0].number, "value": same[0].value, "values": same[0].params}
                              if same else None)
    elif not study.trials:
        raise ClightConfigError("`clight tune`: no trial ran; check `--trials`.")
    (out / "trials.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
