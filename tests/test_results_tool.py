"""tools/docs/results.py: which configs join each stream, the marked block of docs/RESULTS.md, and one end-to-end
regeneration on tiny configs (one real `clight fit` cell per stream)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from clight_testing import DOMAINS, ROOT, TINY_LLAMA

TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


results = _load_tool("results")


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _tiny_cpt() -> dict:
    return {
        "seed_everything": 0,
        "model": {"task": "causal_lm", "config": dict(TINY_LLAMA)},
        "data": {"class_path": "clight.datamodules.CausalLMStream", "init_args": {
            "train_file": str(DOMAINS / "train.jsonl"), "test_file": str(DOMAINS / "test.jsonl"),
            "tasks": [{"name": "wordnet-glosses"}, {"name": "man-pages"}], "train_tokenizer_vocab": 384,
            "max_length": 32, "batch_size": 8, "eval_max_examples": 8}},
        "trainer": {"accelerator": "cpu", "max_steps": 2, "enable_model_summary": False},
        "stream": {"run_dir": "runs/tiny_cpt", "checkpoint_every_n_steps": 0},
    }


def test_stream_configs_pick_same_stream_same_budget(tmp_path: Path) -> None:
    naive = yaml.safe_load(TINY.read_text())
    _write(tmp_path / "naive.yaml", naive)
    joint = yaml.safe_load(TINY.read_text())
    joint["data"]["init_args"]["joint"] = True
    _write(tmp_path / "joint.yaml", joint)
    ewc = yaml.safe_load(TINY.read_text())
    ewc["trainer"]["callbacks"] = [{"class_path": "clight.callbacks.Replay"}]
    ewc["stream"]["run_dir"] = "runs/elsewhere"
    ewc["model"]["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}  # optimizer may differ
    _write(tmp_path / "ewc.yaml", ewc)
    _write(tmp_path / "zz_new_technique.yaml", ewc)  # unknown name, same stream: joins, after the known ones
    longer = yaml.safe_load(TINY.read_text())
    longer["trainer"]["max_steps"] = 30  # another budget: not comparable
    _write(tmp_path / "replay.yaml", longer)
    other = yaml.safe_load(TINY.read_text())
    other["data"]["init_args"]["scenario"] = "task_incremental"
    _write(tmp_path / "task_incremental.yaml", other)
    _write(tmp_path / "continual_pretraining.yaml", _tiny_cpt())
    cpt_l2 = _tiny_cpt()
    cpt_l2["trainer"]["callbacks"] = []
    _write(tmp_path / "continual_pretraining_l2_anchor.yaml", cpt_l2)

    chosen, skipped = results.stream_configs(results.STREAMS["wordnet"], tmp_path)
    assert [c.stem for c in chosen] == ["naive", "joint", "ewc", "zz_new_technique"]
    assert skipped == [f"wordnet: skipping {tmp_path / 'replay.yaml'} — differs from naive.yaml in trainer.max_steps"]
    chosen, _ = results.stream_configs(results.STREAMS["pretraining"], tmp_path)
    assert [c.stem for c in chosen] == ["continual_pretraining", "continual_pretraining_l2_anchor"]


def test_replace_block_keeps_the_hand_written_text() -> None:
    doc = "# Results\n\nintro\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\n## Overhead\nhand\n"
    assert results.replace_block(doc, "new\n") == ("# Results\n\nintro\n\n<!-- results:begin -->\nnew\n"
                                                   "<!-- results:end -->\n\n## Overhead\nhand\n")
    no_markers = "# Results\n\n## GPU\nhand\n"
    assert results.replace_block(no_markers, "new") == ("# Results\n\n<!-- results:begin -->\nnew\n"
                                                        "<!-- results:end -->\n\n## GPU\nhand\n")
    assert results.replace_block(None, "new") == "# Results\n\n<!-- results:begin -->\nnew\n<!-- results:end -->\n"


def test_the_repository_page_has_one_marked_block() -> None:
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    assert text.count(results.BEGIN) == 1 and text.count(results.END) == 1
    assert text.index(results.BEGIN) < text.index(results.END)


def _table(text: str, title: str) -> dict[str, dict[str, str]]:
    """The comparison table under the `## title` section, as method -> column -> cell."""
    section = text.split(f"## {title}", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_one_command_regenerates_the_page_from_real_cells(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    naive = _write(tmp_path / "naive.yaml", yaml.safe_load(TINY.read_text()))
    cpt = _write(tmp_path / "continual_pretraining.yaml", _tiny_cpt())
    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    doc.write_text("# Results\n\n<!-- results:begin -->\nstale\n<!-- results:end -->\n\n## GPU\nhand-written\n")
    out = tmp_path / "runs"
    argv = ["--configs", str(naive), "--pretraining-configs", str(cpt), "--out", str(out), "--doc", str(doc),
            "--", "--trainer.max_steps", "2"]
    assert results.main(argv) == 0
    text = doc.read_text()
    assert "stale" not in text and text.endswith("## GPU\nhand-written\n")
    assert f"python tools/docs/results.py --configs {naive} --pretraining-configs {cpt}" in text
    assert "-- --trainer.max_steps 2" in text and "torch " in text  # the command, the machine
    for stream, title, metric in (("wordnet", results.STREAMS["wordnet"].title, "class_il_acc"),
                                  ("pretraining", results.STREAMS["pretraining"].title, "ppl")):
        method = "naive" if stream == "wordnet" else "continual_pretraining"
        cell = json.loads((out / stream / method / "seed0" / "results.json").read_text())
        assert [s["optimizer_steps"] for s in cell["timing"]["stages"]] == [2, 2]  # the override reached the run
        row = _table(text, title)[method]
        digits = 3 if metric == "class_il_acc" else 2
        assert row[f"{metric} avg"] == f"{cell['summary'][metric]['average']:.{digits}f}"
        assert row[f"{metric} BWT"] == f"{cell['summary'][metric]['bwt']:.{digits}f}"
        assert row["train s"] == f"{cell['timing']['train_seconds']:.0f}"
        assert row["peak RSS MB"] == f"{cell['peak_rss_mb']:.0f}"
        assert cell["environment"]["torch"] in text
        html = (doc.parent / "results" / f"{stream}.html").read_text()
        assert "<table" in html and not re.search(r"https?://", html)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 4  # per stream: the headline metric's heatmap and curves of its one method
    for link in links:
        assert (doc.parent / link).read_bytes()[:8] == PNG
    # a second run finds every cell finished: nothing reruns, the page is rewritten the same
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed0/results.json")}
    capsys.readouterr()
    assert results.main(argv) == 0
    assert "$ " not in capsys.readouterr().out  # bench prints `$ cmd` for each cell it runs
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/seed0/results.json")} == before
    again = doc.read_text()
    strip = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert strip.sub("", again) == strip.sub("", text)
