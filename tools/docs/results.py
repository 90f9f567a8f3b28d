"""Regenerate docs/RESULTS.md in one command: benchmark the techniques on both reference streams and write the
tables and figures between the `<!-- results:begin -->` and `<!-- results:end -->` markers.

Two streams: (a) the WordNet class-incremental classification stream — `naive`, `joint` and every technique config
in configs/ that runs the same stream with the same budget as configs/naive.yaml; (b) the continual-pretraining
domain stream — configs/continual_pretraining.yaml (naive) and its `continual_pretraining_*.yaml` variants that
run the same stream. Every cell is a `clight bench` cell (`<out>/<stream>/<method>/seed<k>`): finished cells are
skipped, so an interrupted regeneration continues where it stopped. All numbers on the page are read from the
cells' results.json files; text outside the markers is kept as it is.

    python tools/docs/results.py                               # both streams, seed 0 (hours on 2 CPU cores)
    python tools/docs/results.py --seeds 0 1 2                 # mean ± std over three seeds
    python tools/docs/results.py --streams wordnet --configs configs/naive.yaml configs/joint.yaml configs/replay.yaml
    python tools/docs/results.py --no-run                      # re-render from the finished cells only
    python tools/docs/results.py -- --trainer.max_epochs 1     # arguments after `--` go to every run
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clight.commands import bench
from clight.reporting.html import render_html, render_markdown
from clight.reporting.page import build

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


@dataclass(frozen=True)
class Stream:
    """One reference stream of the results page."""

    key: str
    title: str
    reference: str  # the naive config every other config of the stream is checked against
    naive: str
    joint: str
    pattern: str  # which configs/ files may belong to it
    known: tuple[str, ...]  # display order of known methods; others follow alphabetically


STREAMS = {
    "wordnet": Stream(
        key="wordnet", title="WordNet class-incremental stream", reference="naive", naive="naive", joint="joint",
        pattern="*.yaml",
        known=("naive", "joint", "replay", "replay_mixed", "der", "agem", "distillation", "feature_distillation",
               "ewc", "online_ewc", "mas", "si", "l2_anchor", "freeze_lower", "freeze_bitfit", "freeze_ln", "hft",
               "hft_fixed", "gradient_mask_magnitude", "gradient_mask_importance", "gradient_mask_sparse", "lora",
               "chain_of_lora", "orthogonal_lora", "ema", "wise_ft", "interpolation_previous", "merge_ties",
               "merge_magmax"),
    ),
    "pretraining": Stream(
        key="pretraining", title="Continual pretraining: domain stream (perplexity)",
        reference="continual_pretraining", naive="continual_pretraining", joint="continual_pretraining_joint",
        pattern="continual_pretraining*.yaml",
        known=("continual_pretraining", "continual_pretraining_joint", "continual_pretraining_replay",
               "continual_pretraining_distillation", "continual_pretraining_l2_anchor", "continual_pretraining_hft",
               "continual_pretraining_hft_fixed"),
    ),
}


# --------------------------------------------------------------------------- which configs belong to a stream


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What must match for two configs to be one stream with one budget: the data (joint aside), the model
    being trained (not its optimizer or adapters), the seed and the training budget."""
    data = dict(cfg.get("data") or {})
    init = dict(data.get("init_args") or {})
    init.pop("joint", None)
    data["init_args"] = init
    model = cfg.get("model") or {}
    trainer = cfg.get("trainer") or {}
    return {
        "data": data,
        "model": {k: model.get(k) for k in ("model", "config", "task")},
        "seed_everything": cfg.get("seed_everything"),
        "trainer": {k: trainer.get(k) for k in ("max_epochs", "max_steps", "accelerator", "devices", "precision")},
    }


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{path}.{k}")]
    return [path.lstrip(".")] if a != b else []


def stream_configs(stream: Stream, config_dir: Path) -> tuple[list[Path], list[str]]:
    """The configs of `config_dir` that run `stream` with its reference's budget, in display order.

    Returns:
        The configs, and one line per skipped known method (missing or run differently) for the log.
    """
    reference = config_dir / f"{stream.reference}.yaml"
    if not reference.is_file():
        return [], [f"{stream.key}: no {reference} — stream skipped"]
    ident = _identity(_load(reference))
    skipped: list[str] = []
    chosen: list[Path] = []
    for path in sorted(config_dir.glob(stream.pattern)):
        diff = _differences(_identity(_load(path)), ident)
        if not diff:
            chosen.append(path)
        elif path.stem in stream.known:
            skipped.append(f"{stream.key}: skipping {path} — differs from {reference.name} in {', '.join(diff)}")
    order = {name: i for i, name in enumerate(stream.known)}
    chosen.sort(key=lambda p: (order.get(p.stem, len(order)), p.stem))
    return chosen, skipped


# --------------------------------------------------------------------------- the page


def replace_block(doc: str | None, block: str) -> str:
    """Puts `block` between the markers of `doc`, keeping everything outside them; without markers the block
    goes right after the page title (a new page gets the title `# Results`)."""
    wrapped = f"{BEGIN}\n{block.strip()}\n{END}"
    if doc is None:
        return f"# Results\n\n{wrapped}\n"
    if BEGIN in doc and END in doc and doc.index(BEGIN) < doc.index(END):
        start, end = doc.index(BEGIN), doc.index(END) + len(END)
        return doc[:start] + wrapped + doc[end:]
    lines = doc.splitlines(keepends=True)
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if title is None:
        return f"{wrapped}\n\n{doc}"
    head, tail = "".join(lines[: title + 1]), "".join(lines[title + 1 :]).lstrip("\n")
    return f"{head}\n{wrapped}\n\n{tail}"


def _settings(config_text: str | None) -> str | None:
    """One line of the headline settings of a run's resolved config."""
    if not config_text:
        return None
    cfg = yaml.safe_load(config_text) or {}
    model, data = cfg.get("model") or {}, (cfg.get("data") or {}).get("init_args") or {}
    trainer, parts = cfg.get("trainer") or {}, []
    if model.get("model"):
        parts.append(f"model `{model['model']}`")
    elif model.get("config"):
        conf = model["config"]
        size = ", ".join(f"{k} {conf[k]}" for k in ("hidden_size", "num_hidden_layers") if k in conf)
        parts.append(f"{conf.get('model_type', 'model')} built from a config ({size}, random init)")
    optimizer = model.get("optimizer") or {}
    if isinstance(optimizer, dict) and optimizer.get("class_path"):
        lr = (optimizer.get("init_args") or {}).get("lr")
        parts.append(f"{optimizer['class_path'].rsplit('.', 1)[-1]}" + (f" lr {lr:g}" if lr is not None else ""))
    for key, label in (("batch_size", "batch"), ("max_length", "max length")):
        if data.get(key) is not None:
            parts.append(f"{label} {data[key]}")
    for key, label in (("max_epochs", "epochs per task"), ("max_steps", "max steps per task")):
        if trainer.get(key) not in (None, -1):
            parts.append(f"{trainer[key]} {label}")
    return ", ".join(parts) or None


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def stream_section(stream: Stream, configs: Sequence[Path], seeds: Sequence[int], bench_dir: Path, doc: Path,
                   extra: Sequence[str], failed: Sequence[str]) -> str:
    """The Markdown of one stream, built from the finished cells in `bench_dir`; writes its figures beside `doc`
    (`results/<stream>/`) and the full HTML report (`results/<stream>.html`)."""
    bench_cmd = shlex.join(["clight", "bench", *(_rel(c) for c in configs), "--seeds", *map(str, seeds),
                            "--out", _rel(bench_dir), *(["--naive", stream.naive] if stream.naive != "naive" else []),
                            *(["--joint", stream.joint] if stream.joint != "joint" else []),
                            *(["--", *extra] if extra else [])])
    methods, missing = {}, []
    for config in configs:
        runs = [bench_dir / config.stem / f"seed{s}" for s in seeds]
        runs = [r for r in runs if (r / "results.json").is_file()]
        if runs:
            methods[config.stem] = runs
        else:
            missing.append(config.stem)
    lines = [f"## {stream.title}", ""]
    if not methods:
        lines += ["Not run yet. Run its cells with", "", "```bash", bench_cmd, "```", ""]
        return "\n".join(lines)
    rep = build(methods, title=stream.title, naive=stream.naive if stream.naive in methods else None,
                       joint=stream.joint if stream.joint in methods else None, command=bench_cmd)
    settings = _settings(next(iter(rep.methods.values()))[0].get("config_text"))
    fig_dir = doc.parent / "results" / stream.key
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    html_path = doc.parent / "results" / f"{stream.key}.html"
    html_path.write_text(render_html(rep), encoding="utf-8")
    body = render_markdown(rep, doc, fig_dir, level=2, metrics=[rep.primary], configs=False,
                                  stamp=False)
    body_lines = body.splitlines()[1:]  # our own heading instead of the report's title
    if settings:
        lines += [f"Settings (from `{_rel(next(iter(methods.values()))[0])}/config.yaml`): {settings}; seeds "
                  f"{', '.join(map(str, seeds))}" + (f"; every run with `{shlex.join(extra)}`" if extra else "") + ".",
                  ""]
    link = Path(_posix_rel(html_path, doc.parent))
    lines.append(f"Full report with every metric's matrices and curves and the resolved configs: [{link}]({link}) "
                 f"(`clight report {_rel(bench_dir)} --out report.html` renders it from the cells).")
    if missing:
        lines += ["", "Not in the table (no finished cell): " + ", ".join(f"`{m}`" for m in missing)
                  + (f" — failed: {', '.join(failed)}; see the logs beside the run directories" if failed else "")
                  + "."]
    lines += body_lines
    return "\n".join(lines).rstrip("\n") + "\n"


def _posix_rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _generator_machine() -> str:
    from clight.results import environment

    env = environment()
    return (f"{env['cpu_count']} CPU cores" + (f" ({env['cpu_model']})" if env.get("cpu_model") else "")
            + (f", GPU {env['gpu']}" if env.get("gpu") else "") + f"; torch {env['torch']}, lightning "
            f"{env['lightning']}, transformers {env['transformers']}, Python {env['python']}")


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", nargs="+", choices=list(STREAMS), default=list(STREAMS))
    parser.add_argument("--configs", nargs="+", type=Path, default=None,
                        help="WordNet-stream configs (default: naive, joint and every configs/*.yaml running the "
                        "same stream and budget as configs/naive.yaml); name the baselines naive.yaml / joint.yaml")
    parser.add_argument("--pretraining-configs", nargs="+", type=Path, default=None,
                        help="continual-pretraining configs (default: configs/continual_pretraining*.yaml running "
                        "the same stream and budget as configs/continual_pretraining.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/results"), help="bench cells go to <out>/<stream>/")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "RESULTS.md")
    parser.add_argument("--config-dir", type=Path, default=ROOT / "configs", help=argparse.SUPPRESS)
    parser.add_argument("--no-run", action="store_true", help="render from the finished cells; run nothing")
    args = parser.parse_args(argv)
    given = {"wordnet": args.configs, "pretraining": args.pretraining_configs}
    sections, failures = [], []
    for key in args.streams:
        stream = STREAMS[key]
        if given[key] is not None:
            configs = list(given[key])
            for config in configs:
                if not config.is_file():
                    parser.error(f"config {str(config)!r} does not exist")
        else:
            configs, skipped = stream_configs(stream, args.config_dir)
            for line in skipped:
                print(line, flush=True)
        print(f"{key}: {', '.join(c.stem for c in configs) or '(no configs)'}", flush=True)
        bench_dir = args.out / key
        failed: list[str] = []
        if configs and not args.no_run:
            _, failed = bench.run_bench(configs, args.seeds, bench_dir, extra, naive=stream.naive, joint=stream.joint)
            failures += [f"{key}/{f}" for f in failed]
        sections.append(stream_section(stream, configs, args.seeds, bench_dir, args.doc, extra, failed))
    command = ["python", "tools/docs/results.py"]
    if args.streams != list(STREAMS):
        command += ["--streams", *args.streams]
    for flag, value in (("--configs", args.configs), ("--pretraining-configs", args.pretraining_configs)):
        if value is not None:
            command += [flag, *(_rel(c) for c in value)]
    if args.seeds != [0]:
        command += ["--seeds", *map(str, args.seeds)]
    if args.out != Path("runs/results"):
        command += ["--out", str(args.out)]
    if args.doc.resolve() != (ROOT / "docs" / "RESULTS.md").resolve():
        command += ["--doc", str(args.doc)]
    if extra:
        command += ["--", *extra]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"<!-- Generated by tools/docs/results.py on {now}. Edit text outside the results markers only; this block is "
        "rewritten. -->",
        "",
        "Regenerate this block (tables, figures, the HTML reports under `results/`) with one command; finished "
        "cells are skipped, so an interrupted run continues where it stopped, and `--no-run` only re-renders:",
        "",
        "```bash",
        shlex.join(command),
        "```",
        "",
        f"Page generated {now} on: {_generator_machine()}. Each table's `Machine` line is what its runs recorded.",
        "",
    ]
    block = "\n".join(head) + "\n" + "\n".join(sections)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    old = args.doc.read_text(encoding="utf-8") if args.doc.exists() else None
    args.doc.write_text(replace_block(old, block), encoding="utf-8")
    print(f"wrote {args.doc}")
    if failures:
        print(f"{len(failures)} cell(s) failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
