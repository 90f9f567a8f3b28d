"""The `clight` command: every shipped YAML parses, bad input exits cleanly, a tiny run end to end (and DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clight_testing import ROOT

from clight.cli import main

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"


def _clight(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-m", "clight", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_parses_against_the_real_signatures(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model:" in printed and "stream:" in printed and "data:" in printed


def test_there_are_configs_for_both_baselines() -> None:
    names = {c.stem for c in CONFIGS}
    assert {"quickstart", "naive", "joint", "continual_pretraining", "instruction"} <= names


def test_a_yaml_key_that_does_not_exist_is_rejected(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("batch_size: 8", "batch_sise: 8"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(bad)])
    assert exit_info.value.code == 2
    assert "batch_sise" in capsys.readouterr().err


def test_a_missing_data_file_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    proc = _clight("fit", "-c", str(TINY), "--data.init_args.train_file", "nope/train.jsonl",
                   "--stream.run_dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "clight: error: `data.train_file`: data file 'nope/train.jsonl' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_run_end_to_end_then_resume_flag(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"] == ["wordnet-nature", "wordnet-artifacts"]
    assert (run / "config.yaml").read_text().count("wordnet-nature") == 1
    assert "task 2/2 · wordnet-artifacts" in proc.stderr + proc.stdout
    # rerunning without --resume refuses to clobber; with --resume it finds the stream finished
    again = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(run))
    assert again.returncode == 2 and "--stream.resume true" in again.stderr
    resumed = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["matrices"] == results["matrices"]


@pytest.mark.ddp
def test_two_process_cpu_ddp_run_of_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # one eval example per task: rank 1's shard of every eval loader is empty, which must not hang the reduction
    proc = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(run), "--trainer.strategy", "ddp",
                   "--trainer.devices", "2", "--data.init_args.eval_max_examples", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2
    assert [s["optimizer_steps"] for s in results["timing"]["stages"]] == [3, 3]
    assert all(v in (0.0, 1.0) for row in results["matrices"]["class_il_acc"]["matrix"] for v in row)


@pytest.mark.ddp
def test_two_process_cpu_fsdp2_run_of_the_cli_with_a_callback(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(run),
                   "--trainer.strategy.class_path", "lightning.pytorch.strategies.ModelParallelStrategy",
                   "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1",
                   "--trainer.devices", "2", "--trainer.callbacks+=clight.callbacks.L2Anchor")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and [s["optimizer_steps"] for s in results["timing"]["stages"]] == [3, 3]
    state = torch.load(run / "stream.pt", weights_only=True)
    weight = state["module"]["backbone.embeddings.word_embeddings.weight"]
    assert type(weight) is torch.Tensor and weight.shape[0] == 30522  # gathered, not rank 0's half
    anchor = next(iter(state["callbacks"].values()))["anchor"]["backbone.embeddings.word_embeddings.weight"]
    assert anchor.shape == weight.shape
    # the strategy's `auto` sizes put the devices on tensor parallelism, which clight does not shard: a clear error
    bad = _clight("fit", "-c", str(TINY), "--stream.run_dir", str(tmp_path / "bad"),
                  "--trainer.strategy.class_path", "lightning.pytorch.strategies.ModelParallelStrategy",
                  "--trainer.devices", "2")
    assert bad.returncode == 2 and "tensor_parallel_size: 1" in bad.stderr


def test_the_command_sets_the_offline_default_before_any_hugging_face_import() -> None:
    # `import clight.commands` imports no Hugging Face library, so `main` sets HF_HUB_OFFLINE before huggingface_hub
    # reads it (at its import: set later, it has no effect)
    script = (
        "import sys, clight.commands as c\n"
        "early = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'huggingface_hub', 'peft'))\n"
        f"sys.argv = ['clight', 'fit', '-c', {str(TINY)!r}, '--print_config']\n"
        "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "import huggingface_hub.constants as k\n"
        "print('RESULT', early, k.HF_HUB_OFFLINE, 'transformers' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "RESULT [] True True" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_every_task_gets_the_users_callbacks_and_short_names_resolve() -> None:
    from clight.cli import ContinualCLI

    class Probe(ContinualCLI):
        def fit(self, model, datamodule=None, **_):
            self.seen = [type(c).__name__ for c in self.stream_trainer_kwargs()["callbacks"]]

    cli = Probe(args=["fit", "-c", str(ROOT / "configs" / "replay.yaml"), "--trainer.callbacks+=EWC"])
    # LightningCLI's own Trainer appends ModelCheckpoint, a progress bar and a model summary to the list it gets;
    # none of them may reach the stream's Trainers (they would save a stray checkpoint and hide the task's bar)
    assert cli.seen == ["Replay", "EWC"]


def test_print_config_shows_what_every_tasks_trainer_really_gets(tmp_path: Path, capsys) -> None:
    import yaml

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--stream.run_dir", str(run_dir), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    header = [line for line in printed.splitlines() if line.startswith("#")]
    assert any("TaskProgressBar" in line for line in header) and any("AtomicCheckpointIO" in line for line in header)
    trainer = yaml.safe_load(printed)["trainer"]
    # the runner's own values, not jsonargparse's defaults that it would override
    assert trainer["logger"] == {"class_path": "clight.tb.StreamTensorBoardLogger",
                                 "init_args": {"save_dir": str(run_dir)}}
    assert trainer["default_root_dir"] == str(run_dir)
    assert trainer["use_distributed_sampler"] is False and trainer["num_sanity_val_steps"] == 0
    assert not run_dir.exists()  # printing builds nothing


def test_print_config_refuses_an_argument_fit_would_ignore(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY), "--trainer.default_root_dir", "elsewhere", "--print_config"])
    assert exit_info.value.code == 2
    assert "`trainer.default_root_dir`" in capsys.readouterr().err


def test_the_litlogger_tip_is_dropped_and_the_hardware_banner_shown_once() -> None:
    import logging

    from clight.cli import _QuietTrainerBanner

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, msg, None, None)

    quiet = _QuietTrainerBanner()
    quiet._seen = set()
    tip = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x)"
    assert not quiet.filter(record(tip))
    assert quiet.filter(record("GPU available: False, used: False"))
    assert not quiet.filter(record("GPU available: False, used: False"))
    assert not quiet.filter(record("`Trainer.fit` stopped: `max_steps=2` reached."))
    assert quiet.filter(record("Seed set to 0"))


def test_short_callback_names_resolve_in_a_fresh_process_with_no_callbacks_in_the_config() -> None:
    # in-process the techniques are already imported by other tests; the command must import them itself
    proc = _clight("fit", "-c", str(TINY), "--trainer.callbacks+=Replay", "--trainer.callbacks+=EWC",
                   "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: clight.callbacks.Replay" in proc.stdout and "class_path: clight.callbacks.EWC" in proc.stdout
