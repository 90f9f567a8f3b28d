"""`clight tune`: an Optuna study of ordinary `clight fit` trials on a microscopic stream, scored on validation data
only; a rerun continues the study, a failed trial is recorded, and the best config is one `clight fit -c` takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clight.errors import ClightConfigError
from clight.tuning import apply, load_space, run_study

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"


def _config(tmp_path: Path, val_fraction: float | None = 0.25) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["trainer"]["max_steps"] = 2
    cfg["trainer"]["callbacks"] = [{"class_path": "clight.callbacks.EWC",
                                    "init_args": {"strength": 1.0, "num_examples": 16}}]
    cfg["stream"]["checkpoint_every_n_steps"] = 0
    if val_fraction is not None:
        cfg["data"]["init_args"]["val_fraction"] = val_fraction
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _space(tmp_path: Path, spec: str = "{log_uniform: [0.1, 1000.0]}") -> list:
    path = tmp_path / "space.yaml"
    path.write_text(f"trainer.callbacks.0.init_args.strength: {spec}\n")
    return load_space(path)


def test_a_study_scores_trials_on_validation_continues_after_a_rerun_and_writes_a_config(tmp_path: Path) -> None:
    config, space, out = _config(tmp_path), _space(tmp_path), tmp_path / "study"
    first = run_study(config, space, out=out, trials=2, objective="average", metric=None, prune=False, log=print)
    assert [t["state"] for t in first["trials"]] == ["COMPLETE", "COMPLETE"]
    for trial in first["trials"]:
        results = json.loads((Path(trial["folder"]) / "run" / "results.json").read_text())
        assert trial["value"] == pytest.approx(results["validation"]["summary"]["class_il_acc"]["average"])
        assert trial["test"] == results["summary"]["class_il_acc"]  # recorded beside it, never the objective
        assert sorted(trial["intermediate"]) == [0, 1]  # reported after each task, for the pruner
        assert Path(trial["folder"], "config.yaml").is_file()
    # The same command again with a larger budget runs only the missing trial; the first two are kept as they were.
    second = run_study(config, space, out=out, trials=3, objective="average", metric=None, prune=False, log=print)
    assert len(second["trials"]) == 3 and second["trials"][:2] == first["trials"]
    drawn = [t["values"]["trainer.callbacks.0.init_args.strength"] for t in second["trials"]]
    assert len(set(drawn)) == 3, drawn  # the continued study draws new values, not its first run's again
    best = second["best"]
    assert second["default"]["values"] == {"trainer.callbacks.0.init_args.strength": 1.0}  # the config's own
    assert second["default"]["number"] == 0 and second["trials"][0]["values"] == second["default"]["values"]
    assert best["value"] == max(t["value"] for t in second["trials"])
    chosen = yaml.safe_load((out / "best.yaml").read_text())
    assert chosen["trainer"]["callbacks"][0]["init_args"]["strength"] == pytest.approx(
        best["values"]["trainer.callbacks.0.init_args.strength"])
    assert chosen["data"]["init_args"]["val_fraction"] == 0.25
    from clight.cli import ContinualCLI

    parsed = ContinualCLI(args=["-c", str(out / "best.yaml")], run=False)  # `clight fit -c` takes it
    assert parsed.config["trainer"]["callbacks"][0]["init_args"]["strength"] == pytest.approx(
        best["values"]["trainer.callbacks.0.init_args.strength"])


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    summary = run_study(_config(tmp_path), _space(tmp_path, "{uniform: [-2.0, -1.0]}"), out=tmp_path / "study",
                        trials=1, objective="average", metric=None, prune=False, log=print)
    (trial,) = summary["trials"]
    assert trial["state"] == "FAIL" and summary["best"] is None
    assert "`strength`" in trial["error"] and "a number > 0" in trial["error"]
    assert json.loads((tmp_path / "study" / "trials.json").read_text())["trials"][0]["error"] == trial["error"]


def test_a_config_without_a_validation_split_is_refused_before_any_trial(tmp_path: Path) -> None:
    with pytest.raises(ClightConfigError, match="no validation split.*val_fraction: 0.2"):
        run_study(_config(tmp_path, val_fraction=None), _space(tmp_path), out=tmp_path / "study", trials=1,
                  objective="average", metric=None)
    assert not (tmp_path / "study" / "trials").exists()


@pytest.mark.parametrize(("spec", "message"), [
    ("{log_uniform: [0.0, 1.0]}", "`log_uniform` needs low > 0"),
    ("{uniform: [2, 1]}", "needs \\[low, high\\] with low < high"),
    ("{normal: [0, 1]}", "give exactly one of"),
    ("{choice: []}", "`choice` needs a non-empty list"),
])
def test_a_bad_space_entry_is_one_line_naming_it(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ClightConfigError, match=f"entry 'trainer.callbacks.0.init_args.strength'.*{message}"):
        _space(tmp_path, spec)


def test_a_space_path_the_config_lacks_is_refused_by_name() -> None:
    with pytest.raises(ClightConfigError, match="'trainer.callbacks.3.init_args.strength'.*no list entry '3'"):
        apply({"trainer": {"callbacks": [{}]}}, {"trainer.callbacks.3.init_args.strength": 1.0})


def test_the_command_exits_2_with_one_line_for_a_missing_space_file(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "clight", "tune", "-c", str(_config(tmp_path)), "--space",
                           str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "clight tune: error: `--space`:" in proc.stderr and "nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
