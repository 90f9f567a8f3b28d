"""clight report and the comparison helpers of clight.reporting: the HTML page and its Markdown twin are
checked structurally on tiny real runs (tables hold the results.json numbers, images decode as PNG, nothing
is fetched from the network)."""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from clight_testing import run_stream

from clight.reporting import (
    compare_methods,
    comparison_markdown,
    format_mean_std,
    mean_std,
    render_task_curves,
    summarize_runs,
)

PNG = b"\x89PNG\r\n\x1a\n"


class report:  # noqa: N801 - the `clight report` pieces under one name
    from clight.commands.report import main
    from clight.reporting.page import build, discover



# --------------------------------------------------------------------------- pure helpers


def _fake(avg: float, sps: float, *, joint: bool = False, higher: bool = True) -> dict:
    summary = {"average": avg, "bwt": None if joint else -0.5, "fwt": None if joint else 0.0,
               "forgetting": None if joint else 0.5, "learning": None}
    return {"primary_metric": "acc", "matrices": {"acc": {"higher_is_better": higher}}, "summary": {"acc": summary},
            "timing": {"optimizer_steps": 10, "train_seconds": 5.0, "seconds_per_step": sps}, "peak_rss_mb": 100.0,
            "checkpoint_mb": 2.0}


def test_mean_std_and_format() -> None:
    assert mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))  # sample std: sqrt(((1-2)^2 + (3-2)^2) / 1)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([None, None]) == (None, None)
    assert format_mean_std((0.25, 0.0)) == "0.250"
    assert format_mean_std((0.25, 0.125), 2) == "0.25 ± 0.12"
    assert format_mean_std((None, None)) == "—" and format_mean_std(None) == "—"


def test_gap_closed_and_step_ratio_by_hand() -> None:
    rows = {"naive": summarize_runs([_fake(0.2, 1.0)]), "joint": summarize_runs([_fake(0.8, 1.2, joint=True)]),
            "m": summarize_runs([_fake(0.5, 2.0), _fake(0.7, 1.0)])}
    out = compare_methods(rows)
    assert out["naive"]["gap_closed"] == 0.0 and out["joint"]["gap_closed"] == 1.0
    assert out["m"]["acc/average"] == pytest.approx((0.6, math.sqrt(0.02)))
    assert out["m"]["gap_closed"] == pytest.approx((0.6 - 0.2) / (0.8 - 0.2))
    assert out["m"]["step_ratio"] == pytest.approx(1.5 / 1.0)
    assert compare_methods(rows, joint=None)["m"]["gap_closed"] is None
    assert compare_methods(rows, naive=None)["m"]["step_ratio"] is None
    # lower-is-better metrics use the same formula: perplexity 100 (naive) -> 40 (joint), 70 closes half the gap
    ppl = {"naive": summarize_runs([_fake(100, 1, higher=False)]),
           "joint": summarize_runs([_fake(40, 1, joint=True, higher=False)]),
           "m": summarize_runs([_fake(70, 1, higher=False)])}
    assert compare_methods(ppl)["m"]["gap_closed"] == pytest.approx(0.5)
    table = comparison_markdown(out).splitlines()
    assert table[0].startswith("| method | seeds | acc avg | acc BWT |") and "peak GPU MB" not in table[0]
    assert table[4].startswith("| m | 2 | 0.600 ± 0.141 | -0.500 |")


def _loaded(avg: float, sps: float, load: float, cpu: float) -> dict:
    cell = _fake(avg, sps)
    cell["timing"].update(load_average=load, cpu_over_wall=cpu)
    return cell


def test_a_step_ratio_is_flagged_where_the_cells_machine_loads_differ() -> None:
    rows = compare_methods({"naive": summarize_runs([_loaded(0.2, 3.38, load=4.1, cpu=1.0)]),
                            "alone": summarize_runs([_loaded(0.5, 1.0, load=2.0, cpu=1.9)]),
                            "same": summarize_runs([_loaded(0.5, 3.5, load=4.3, cpu=1.05)])})
    assert rows["alone"]["load_differs"] and not rows["same"]["load_differs"] and not rows["naive"]["load_differs"]
    table = comparison_markdown(rows)
    alone = next(line for line in table.splitlines() if line.startswith("| alone |"))
    same = next(line for line in table.splitlines() if line.startswith("| same |"))
    assert "| 0.30 † |" in alone and "| 4.1 |" not in alone and "| 2.0 | 1.90 |" in alone
    assert "| 1.04 |" in same and "†" not in same
    assert table.rstrip().endswith("mixes contention into the cost.")
    calm = compare_methods({"naive": summarize_runs([_loaded(0.2, 1.0, 2.0, 1.9)]),
                            "m": summarize_runs([_loaded(0.5, 1.1, 2.2, 1.8)])})
    assert "†" not in comparison_markdown(calm)


def test_bench_val_mode_reads_the_validation_matrices() -> None:
    from clight.commands.bench import validation_view

    cell = _fake(0.2, 1.0)
    assert validation_view(cell) is None  # no split: nothing to tabulate
    cell["validation"] = {"matrices": {"acc": {"higher_is_better": True}},
                          "summary": {"acc": {**cell["summary"]["acc"], "average": 0.9}}}
    row = summarize_runs([validation_view(cell)])
    assert row["acc/average"] == (0.9, 0.0) and cell["summary"]["acc"]["average"] == 0.2


def test_task_curves_figure() -> None:
    fig = render_task_curves([[0.9, 0.1], [0.5, 0.8]], ["a", "b"], ["a", "b"], title="t", metric="acc",
                             higher_is_better=True, initial=[0.2, 0.3], spread=[[0.0, 0.1], [0.1, 0.0]])
    ax = fig.axes[0]
    xs = [line.get_xdata().tolist() for line in ax.get_lines()]
    assert [0, 1, 2] in xs  # one line per task over initial + 2 stages
    assert [t.get_text() for t in ax.get_xticklabels()] == ["initial", "a", "b"]
    assert ax.get_yscale() == "linear"
    ppl = render_task_curves([[20.0, 300.0]], ["joint"], ["a", "b"], title="t", metric="ppl", higher_is_better=False)
    assert ppl.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        render_task_curves([[0.1, 0.2]], ["a", "b"], ["a", "b"], title="t", metric="acc", higher_is_better=True)


# --------------------------------------------------------------------------- tiny real runs


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clight bench-shaped folder from three tiny real runs: naive (two cells), joint, and `short`."""
    root = tmp_path_factory.mktemp("bench")
    fast = {"optimizer": functools.partial(torch.optim.AdamW, lr=3e-3)}  # a few steps that change the numbers
    run_stream(root / "naive" / "seed0", [], max_steps=6, checkpoint_every_n_steps=0, module_kwargs=fast)
    # the second naive cell is a real run with fewer steps, so that its numbers differ from seed0's
    run_stream(root / "naive" / "seed1", [], max_steps=3, checkpoint_every_n_steps=0, module_kwargs=fast)
    run_stream(root / "joint" / "seed0", [], max_steps=6, checkpoint_every_n_steps=0, module_kwargs=fast,
               stream_kwargs={"joint": True})
    # `short` is naive's seed1 cell on its own: a third method whose numbers differ from naive's mean
    shutil.copytree(root / "naive" / "seed1", root / "short" / "seed0")
    (root / "short" / "seed0" / "config.yaml").write_text("model:\n  note: <b>escaped</b>\n")
    (root / "table.json").write_text(json.dumps({"naive": {}, "joint": {}, "short": {}}))
    return root


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


class _Tables(HTMLParser):
    """Collects table rows (as lists of cell texts) and <img> sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _expected(bench: Path) -> dict[str, dict[str, str]]:
    """The table cells computed by hand from the results.json files."""
    naive = [_results(bench / "naive" / s) for s in ("seed0", "seed1")]
    joint, short = _results(bench / "joint" / "seed0"), _results(bench / "short" / "seed0")
    def ms(values: list[float]) -> str:
        mean, std = statistics.mean(values), statistics.stdev(values)
        return f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")

    avg = [r["summary"]["class_il_acc"]["average"] for r in naive]
    n_mean = statistics.mean(avg)
    j_avg, s_avg = joint["summary"]["class_il_acc"]["average"], short["summary"]["class_il_acc"]["average"]
    sps = statistics.mean(r["timing"]["seconds_per_step"] for r in naive)
    differ = j_avg != n_mean  # gap closed is undefined when joint and naive tie
    return {
        "naive": {"avg": ms(avg), "gap": "0.00" if differ else "—", "ratio": "1.00",
                  "bwt": ms([r["summary"]["class_il_acc"]["bwt"] for r in naive])},
        "joint": {"avg": f"{j_avg:.3f}", "bwt": "—", "gap": "1.00" if differ else "—"},
        "short": {"avg": f"{s_avg:.3f}", "bwt": f"{short['summary']['class_il_acc']['bwt']:.3f}",
                  "ratio": f"{short['timing']['seconds_per_step'] / sps:.2f}",
                  "steps": str(short["timing"]["optimizer_steps"]),
                  "gap": f"{(s_avg - n_mean) / (j_avg - n_mean):.2f}" if differ else "—"},
    }


def test_discover_layouts(bench_dir: Path) -> None:
    assert {k: len(v) for k, v in report.discover([str(bench_dir)]).items()} == {"naive": 2, "joint": 1, "short": 1}
    assert list(report.discover([str(bench_dir / "naive")])) == ["naive"]
    assert list(report.discover([str(bench_dir / "short" / "seed0")])) == ["short"]  # seed<k> -> method name
    named = report.discover([f"base={bench_dir / 'naive'}", f"other={bench_dir / 'short' / 'seed0'}"])
    assert {k: len(v) for k, v in named.items()} == {"base": 2, "other": 1}
    with pytest.raises(SystemExit, match="two paths give the method name 'naive'"):
        report.discover([str(bench_dir / "naive"), str(bench_dir / "naive" / "seed0")])
    with pytest.raises(SystemExit, match="found no results.json"):
        report.discover([str(bench_dir / "nothing-here")])


def test_html_report_from_a_bench_folder(bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "report.html"
    assert report.main([str(bench_dir), "--out", str(out), "--title", "Tiny <stream>"]) == 0
    text = out.read_text()
    assert not re.search(r"https?://", text) and "<script" not in text and "<link" not in text
    assert "<title>Tiny &lt;stream&gt;</title>" in text and "<b>escaped</b>" not in text
    assert "&lt;b&gt;escaped&lt;/b&gt;" in text  # the resolved config, escaped
    parser = _Tables()
    parser.feed(text)
    header = parser.rows[1]  # the second header row: the columns under each group
    assert header[:4] == ["avg", "BWT", "FWT", "forgetting"]
    rows = {r[0]: r for r in parser.rows[2:] if r}
    assert list(rows) == ["naive", "joint", "short"]  # table.json order
    col = {name: header.index(name) + 2 for name in header}  # first (class-IL) group; + method and seeds (rowspan)
    for method, want in _expected(bench_dir).items():
        assert rows[method][1] == ("2" if method == "naive" else "1")
        assert rows[method][col["avg"]] == want["avg"], method
        assert rows[method][col["BWT"]] == want["bwt"], method
        assert rows[method][col["gap closed"]] == want["gap"], method
        if "ratio" in want:
            assert rows[method][col["× naive"]] == want["ratio"], method
        if "steps" in want:
            assert rows[method][col["steps"]] == want["steps"], method
    # 3 methods x 2 metrics (class-IL and task-IL) x (heatmap + curves), every one an inline PNG
    assert len(parser.images) == 12
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def test_markdown_twin_links_png_files_and_holds_the_same_numbers(bench_dir: Path, tmp_path: Path) -> None:
    md = tmp_path / "out" / "report.md"
    report.main([str(bench_dir), "--out", str(tmp_path / "out" / "report.html"), "--md", str(md)])
    text = md.read_text()
    assert not re.search(r"https?://", text)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 12 and all(link.startswith("report_files/") for link in links)
    for link in links:
        assert (md.parent / link).read_bytes()[:8] == PNG
    body = text.splitlines()
    start = next(i for i, line in enumerate(body) if line.startswith("| method |"))
    end = next(i for i in range(start, len(body)) if not body[i].startswith("|"))
    lines = [line for line in body[start:end] if not line.startswith("|---")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    for method, want in _expected(bench_dir).items():
        assert rows[method][header.index("class_il_acc avg")] == want["avg"]
        assert rows[method][header.index("class_il_acc BWT")] == want["bwt"]
        assert rows[method][header.index("gap closed")] == want["gap"]
    assert "```yaml" in text and "<b>escaped</b>" in text  # configs verbatim in a fenced block


def test_runs_on_different_streams_are_refused(bench_dir: Path, tmp_path: Path) -> None:
    one = tmp_path / "one_task"
    shutil.copytree(bench_dir / "short" / "seed0", one)
    results = _results(one)
    results["tasks"] = results["tasks"][:1]  # as if it ran on a one-task stream
    (one / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="a comparison needs one stream"):
        report.build(report.discover([str(bench_dir / "naive"), str(one)]))


def test_mean_over_seeds_in_the_heatmap_input(bench_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "naive"
    shutil.copytree(bench_dir / "naive", copy)
    rep = report.build({"naive": sorted(copy.glob("seed*"))}, metrics=[])
    a, b = (np.array(r["matrices"]["class_il_acc"]["matrix"]) for r in rep.methods["naive"])
    from clight.reporting import mean_matrix

    np.testing.assert_allclose(mean_matrix(rep.methods["naive"], "class_il_acc"), (a + b) / 2)
    assert rep.figures == {}  # metrics=[] draws nothing
