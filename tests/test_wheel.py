"""The wheel: it ships the library, its data and every `clight` subcommand (and not tests/ or tools/), and each
subcommand works from a wheel install, outside the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import yaml
from clight_testing import ROOT

pytestmark = pytest.mark.slow

COMMANDS = ("fit", "evaluate", "bench", "report", "export", "merge", "tune")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel built from the work tree, installed (no dependencies) into a venv that sees this Python's packages."""
    root = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools' build/ folder in the tree would keep modules that no longer exist
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(root / "dist"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((root / "dist").glob("clight-*.whl"))
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = zipfile.ZipFile(wheel).namelist()
    script = root / "venv" / "bin" / "clight"  # the console script pip wrote from the wheel's entry point
    work = root / "work"  # outside the source tree: nothing imports from the checkout
    work.mkdir()
    return {"names": names, "site": Path(site), "clight": str(script), "work": work}


def _run(installed: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([installed["clight"], *args], cwd=installed["work"], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, timeout=600)
    if check:
        assert proc.returncode == 0, f"clight {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_ships_the_library_data_and_commands_but_not_tests_or_tools(installed) -> None:
    names = set(installed["names"])
    sources = {f"clight/{p.relative_to(ROOT / 'clight')}" for p in (ROOT / "clight").rglob("*.py")}
    sources |= {f"clight/{top}/{p.relative_to(ROOT / top)}" for top in ("callbacks", "datamodules")
                for p in (ROOT / top).rglob("*.py")}
    assert sources - names == set()  # every module of the three source folders ships
    assert {"clight/data/wordnet/train.jsonl", "clight/data/wordnet/LICENSE", "clight/data/llm/probes.jsonl"} <= names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "callbacks/", "datamodules/"))]


def test_clight_help_lists_every_subcommand_and_each_has_its_help(installed) -> None:
    out = _run(installed, "--help").stdout
    assert all(f"\n  {name} " in out for name in COMMANDS), out
    for name in COMMANDS:
        assert "usage:" in _run(installed, name, "--help").stdout
    bad = _run(installed, "train", check=False)
    assert bad.returncode == 2 and "unknown command 'train'" in bad.stderr


def test_every_subcommand_runs_from_the_wheel(installed) -> None:
    work, data = installed["work"], installed["site"] / "clight" / "data" / "wordnet"
    config = yaml.safe_load((ROOT / "tests" / "data" / "tiny_classification.yaml").read_text())
    config["data"]["init_args"].update(train_file=str(data / "train.jsonl"), test_file=str(data / "test.jsonl"))
    config["trainer"]["max_steps"] = 2
    (work / "naive.yaml").write_text(yaml.safe_dump(config))
    _run(installed, "fit", "-c", "naive.yaml", "--stream.run_dir", "run", "--trainer.enable_progress_bar", "false")
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["stages"] == ["wordnet-nature", "wordnet-artifacts"]

    _run(installed, "evaluate", "run", "--out", "eval.json")
    evaluated = json.loads((work / "eval.json").read_text())
    final = {t: results["matrices"]["class_il_acc"]["matrix"][-1][i] for i, t in enumerate(results["tasks"])}
    assert {t: v["class_il_acc"] for t, v in evaluated["metrics"].items()} == pytest.approx(final)

    _run(installed, "export", "run", "--out", "exported")
    assert (work / "exported" / "model" / "model.safetensors").exists() and (work / "exported" / "head.safetensors").exists()

    _run(installed, "merge", "--method", "task_arithmetic", "--base", "run", "--out", "merged.pt", "run")
    assert (work / "merged.pt").exists()

    _run(installed, "bench", "naive.yaml", "--out", "bench", "--", "--trainer.max_steps", "1")
    assert (work / "bench" / "table.md").exists()

    _run(installed, "report", "bench", "--out", "report.html")
    assert (work / "report.html").read_text().startswith("<!DOCTYPE html>")
