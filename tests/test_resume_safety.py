"""Resume safety: a resume with any changed setting is refused by name (old -> new) and leaves the run alone; a
finished run resumes as a report; a kill or a full disk during a checkpoint write leaves the previous checkpoint
usable and the resumed run equal to an uninterrupted one; an unreadable mid-task checkpoint falls back to the end
of the last finished task; overwrite never mixes two runs and a run that fails before its first checkpoint leaves
nothing behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from clight_testing import ROOT, CrashAt, SimulatedCrash, tiny_module, tiny_stream

from clight import StreamOptions, StreamRunner
from clight.commands import main
from clight.errors import ClightConfigError

TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"
L2 = "--trainer.callbacks+=clight.callbacks.L2Anchor"
BASE = ["--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false", "--model.optimizer", "torch.optim.AdamW",
        "--model.optimizer.lr", "5e-05", L2]
TASKS = "[{name: wordnet-nature%s}, {name: wordnet-artifacts}]"


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def fit(run: Path, *args: str) -> int:
    try:
        main(["fit", "-c", str(TINY), "--stream.run_dir", str(run), *args])
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny `clight fit` run (AdamW at 5e-5, L2Anchor, one step per task)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        assert fit(run, *BASE) == 0
    finally:
        os.chdir(cwd)
    assert (run / "results.json").is_file()
    return run


@pytest.fixture
def in_root(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)


# ---- every changed setting is refused by name ------------------------------------------------------------------
CHANGED = [  # (id, the resumed command's arguments, what the refusal names)
    ("lr", [*BASE, "--model.optimizer.lr", "0.001"], "model.optimizer.init_args.lr: 5e-05 -> 0.001"),
    ("optimizer", [*BASE, "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.1"],
     "model.optimizer: torch.optim.AdamW -> torch.optim.SGD"),
    ("weight_decay", [*BASE, "--model.optimizer.weight_decay", "0.5"],
     "model.optimizer.init_args.weight_decay: 0.01 -> 0.5"),
    ("seed", [*BASE, "--seed_everything", "1"], "seed_everything: 0 -> 1"),
    ("data_seed", [*BASE, "--data.init_args.seed", "1"], "data.init_args.seed: 0 -> 1"),
    ("batch_size", [*BASE, "--data.init_args.batch_size", "4"], "data.init_args.batch_size: 8 -> 4"),
    ("eval_batch_size", [*BASE, "--data.init_args.eval_batch_size", "4"], "data.init_args.eval_batch_size: null -> 4"),
    ("step_budget", [*BASE, "--trainer.max_steps", "2"], "trainer.max_steps: 1 -> 2"),
    ("epoch_budget", [*BASE, "--trainer.max_epochs", "3"], "trainer.max_epochs: null -> 3"),
    ("task_budget", [*BASE, "--data.init_args.tasks", TASKS % ", max_steps: 2"],
     "data.init_args.tasks[wordnet-nature].max_steps: null -> 2"),
    ("gradient_accumulation", [*BASE, "--trainer.accumulate_grad_batches", "2"],
     "trainer.accumulate_grad_batches: 1 -> 2"),
    ("gradient_clipping", [*BASE, "--trainer.gradient_clip_val", "1.0"], "trainer.gradient_clip_val: null -> 1.0"),
    ("precision", [*BASE, "--trainer.precision", "bf16-mixed"], "trainer.precision: null -> bf16-mixed"),
    ("world_size", [*BASE, "--trainer.devices", "2", "--trainer.strategy", "ddp"], "world_size: 1 -> 2"),
    ("callback_argument", [*BASE, "--trainer.callbacks.strength", "3.0"],
     "trainer.callbacks[L2Anchor].init_args.strength: 1.0 -> 3.0"),
    ("dropped_callback", [a for a in BASE if a != L2],
     "trainer.callbacks[L2Anchor]: clight.callbacks.L2Anchor -> (absent)"),
    ("added_callback", [*BASE, "--trainer.callbacks+=clight.callbacks.EWC"],
     "trainer.callbacks[EWC]: (absent) -> clight.callbacks.EWC"),
    ("model", [*BASE, "--model.config", "{model_type: bert, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: "
               "2, intermediate_size: 64, max_position_embeddings: 64, vocab_size: 30522}"],
     "model.config.hidden_size: 32 -> 16"),
    ("max_length", [*BASE, "--data.init_args.max_length", "16"], "data.init_args.max_length: 24 -> 16"),
    ("eval_initial", [*BASE, "--stream.eval_initial", "false"], "stream.eval_initial: true -> false"),
]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(("changed", "expect"), [(c[1], c[2]) for c in CHANGED], ids=[c[0] for c in CHANGED])
def test_a_resume_with_a_changed_setting_is_refused_by_name(finished_run: Path, changed: list[str], expect: str,
                                                            in_root, capsys) -> None:
    before = snapshot(finished_run)
    assert fit(finished_run, *changed, "--resume") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clight: error:")]
    assert len(lines) == 1 and expect in lines[0], lines
    assert "--stream.overwrite true" in lines[0] and "--stream.run_dir" in lines[0]
    assert snapshot(finished_run) == before


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_a_finished_run_resumes_as_a_report_and_cosmetic_changes_are_accepted(finished_run: Path, in_root,
                                                                              capsys) -> None:
    before = snapshot(finished_run)
    cosmetic = ["--stream.checkpoint_every_n_steps", "7", "--trainer.log_every_n_steps", "1",
                "--data.init_args.num_workers", "0", "--stream.keep_task_checkpoints", "true"]
    assert fit(finished_run, *BASE, *cosmetic, "--resume") == 0
    assert "already finished its 2 tasks: nothing to resume, nothing changed" in capsys.readouterr().out
    assert snapshot(finished_run) == before


# ---- kills and full disks during checkpoint writes --------------------------------------------------------------
def _runner(run: Path, *, resume: bool, callbacks: list | None = None, eval_initial: bool = True,
            **trainer: Any) -> StreamRunner:
    kwargs = dict(max_steps=4, max_epochs=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                  enable_model_summary=False, log_every_n_steps=1, callbacks=callbacks or [], **trainer)
    return StreamRunner(kwargs, StreamOptions(run_dir=str(run), resume=resume, overwrite=not resume,
                                              eval_initial=eval_initial, checkpoint_every_n_steps=2))


def _run(run: Path, *, resume: bool = False, callbacks: list | None = None, eval_initial: bool = True,
         **trainer: Any) -> tuple[dict, Any]:
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    module = tiny_module()
    return _runner(run, resume=resume, callbacks=callbacks, eval_initial=eval_initial, **trainer).run(
        module, tiny_stream()), module


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict]:
    results, module = _run(tmp_path_factory.mktemp("reference") / "run")
    return results, {k: v.clone() for k, v in module.state_dict().items()}


def assert_equals_reference(results: dict, module: Any, reference: tuple[dict, dict]) -> None:
    ref_results, ref_state = reference
    assert results["matrices"] == ref_results["matrices"]
    for name, value in ref_state.items():
        assert torch.equal(value, module.state_dict()[name]), name


class FailingWrite:
    """``torch.save`` that, at the ``nth`` write of a file named ``target`` + ``.tmp`` (where clight writes a
    checkpoint before renaming it), writes half of it and then dies (a kill) or fails with ENOSPC (a full disk)."""

    def __init__(self, target: str, nth: int, how: str) -> None:
        self.target, self.nth, self.how, self.seen = target, nth, how, 0
        self.save = torch.save

    def __call__(self, obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not str(f).endswith(self.target + ".tmp"):
            return self.save(obj, f, *args, **kwargs)
        self.seen += 1
        if self.seen != self.nth:
            return self.save(obj, f, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        self.save(obj, buffer, *args, **kwargs)
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        if self.how == "kill":
            raise SimulatedCrash(f"killed while writing {f}")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))


# stream.pt: written after the initial evaluation (1st) and after each task (2nd: after task 0).
# last.ckpt: every 2 steps of 4 per task: task 0 at steps 2 and 4, task 1 at 2 (3rd write) and 4 (4th).
@pytest.mark.parametrize("how", ["kill", "enospc"])
@pytest.mark.parametrize(("target", "nth", "left"), [("stream.pt", 2, "stream.pt"), ("last.ckpt", 4, "last.ckpt")],
                         ids=["stream_pt", "last_ckpt"])
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint_and_the_resume_is_exact(
        tmp_path: Path, monkeypatch, reference, target: str, nth: int, left: str, how: str) -> None:
    run = tmp_path / "run"
    failing = FailingWrite(target, nth, how)
    monkeypatch.setattr(torch, "save", failing)
    expected = SimulatedCrash if how == "kill" else ClightConfigError
    with pytest.raises(expected) as failure:
        _run(run)
    monkeypatch.setattr(torch, "save", failing.save)
    previous = run / "stream.pt" if target == "stream.pt" else run / "checkpoints" / "wordnet-artifacts" / "last.ckpt"
    saved = torch.load(previous, weights_only=True)  # the previous checkpoint is whole
    if target == "stream.pt":
        assert saved["state"]["completed"] == 0 and saved["state"]["initial_done"]
    else:
        assert saved["global_step"] == 2
    if how == "enospc":
        message = str(failure.value)
        assert "\n" not in message and left in message and "No space left on device" in message
        assert f"the previous {left} is intact" in message
        assert not previous.with_name(previous.name + ".tmp").exists()  # the partial file is removed
    else:
        assert previous.with_name(previous.name + ".tmp").exists()  # what a kill leaves behind
    results, module = _run(run, resume=True)
    assert_equals_reference(results, module, reference)
    assert not (run / "stream.pt.tmp").exists()


def test_an_unreadable_mid_task_checkpoint_falls_back_to_the_end_of_the_last_finished_task(
        tmp_path: Path, reference, capsys) -> None:
    run = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        _run(run, callbacks=[CrashAt(task=1, step=3)])
    last = run / "checkpoints" / "wordnet-artifacts" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    results, module = _run(run, resume=True)
    err = capsys.readouterr().err
    assert "clight: warning: the mid-task checkpoint" in err and "last.ckpt' is unreadable" in err
    assert "restarts from the end of the last finished task" in err
    assert results["timing"]["stages"][1]["resumed_mid_task"] is False
    assert_equals_reference(results, module, reference)


def test_a_mid_task_checkpoint_carries_the_fingerprint_when_there_is_no_stream_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(SimulatedCrash):  # no initial evaluation: the first task's last.ckpt is all there is
        _run(run, callbacks=[CrashAt(task=0, step=3)], eval_initial=False)
    assert not (run / "stream.pt").exists() and (run / "checkpoints" / "wordnet-nature" / "last.ckpt").exists()
    with pytest.raises(ClightConfigError, match=r"trainer\.gradient_clip_val: \(absent\) -> 0\.5"):
        _run(run, resume=True, eval_initial=False, gradient_clip_val=0.5)
    results, _ = _run(run, resume=True, eval_initial=False)
    assert results["timing"]["stages"][0]["resumed_mid_task"] is True


# ---- the run folder -----------------------------------------------------------------------------------------------
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_trace(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        _run(run, callbacks=[CrashAt(task=0, step=1)], eval_initial=False)
    assert not run.exists()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_overwrite_keeps_the_old_run_until_the_new_one_passed_its_checks_then_replaces_all_of_it(
        tmp_path: Path, in_root) -> None:
    run = tmp_path / "run"
    assert fit(run, "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false") == 0
    (run / "matrix_old_metric.png").write_bytes(b"an older run's heatmap")
    before = snapshot(run)
    old_events = {p.name for p in (run / "tensorboard").rglob("events.*")}
    # a failed start (a bad input found after the model and the data were read) loses nothing
    assert fit(run, "--stream.overwrite", "true", "--trainer.max_steps", "1", "--model.optimizer", "torch.optim.AdamW",
               "--model.optimizer.lr", "0") == 2
    assert snapshot(run) == before
    assert fit(run, "--stream.overwrite", "true", "--trainer.max_steps", "2", "--trainer.enable_progress_bar",
               "false") == 0
    assert not (run / "matrix_old_metric.png").exists()
    new_events = {p.name for p in (run / "tensorboard").rglob("events.*")}
    assert new_events and not new_events & old_events  # the old run's events are gone, not mixed with the new
    stages = json.loads((run / "results.json").read_text())["timing"]["stages"]
    assert [s["optimizer_steps"] for s in stages] == [2, 2]
