"""FSDP2 check of every callback of the contract table (tests/callbacks/cases*.py) on GPUs.

Each case runs the same tiny two-task stream the contract harness uses (a tiny BERT or Llama built from a config;
the classification tokenizer is a byte-level BPE trained here, so no model package is needed) under Lightning's
`ModelParallelStrategy`, which `ContinualModule` shards with FSDP2 (`fully_shard`, see clight/sharding.py), on
the visible GPUs. The outcome must match the callback's declaration: a callback with `supports_sharded = True`
must finish the stream, every other one must be refused in `setup` with a `ClightConfigError`. On the CPU the
same path is tested against DDP by tests/test_sharded.py (2 processes, gloo); this script is its GPU twin
(NCCL, bf16 where asked). With one GPU the mesh has one rank, so nothing is split; run it with `--devices 2`
(or more) where there are several GPUs.

    python tests/fsdp_smoke.py --devices 1
    python tests/fsdp_smoke.py --devices 2 --cpu      # the same on 2 CPU processes (gloo)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "callbacks")]

from cases import CASES  # noqa: E402
from clight_testing import WORDNET, run_stream  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402

from clight.datamodules.causal_lm import train_bpe_tokenizer  # noqa: E402
from clight.errors import ClightConfigError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--cases", nargs="*", default=None, help="case ids (default: all)")
    parser.add_argument("--cpu", action="store_true", help="CPU processes (gloo) instead of GPUs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # one directory for all ranks (Lightning's launcher starts rank 1 with rank 0's environment): the runs'
    # checkpoints are written by all ranks together
    tmp = Path(os.environ.setdefault("CLIGHT_FSDP_SMOKE_DIR", tempfile.mkdtemp(prefix="clight-fsdp-")))
    if not (tmp / "tokenizer").exists():  # rank 0, before any other rank starts
        texts = [json.loads(line)["text"] for line in (WORDNET / "train.jsonl").read_text().splitlines()]
        train_bpe_tokenizer(texts, 2000).save_pretrained(str(tmp / "tokenizer"))
    rows = []
    for case in CASES:
        if case.id == "probe" or (args.cases and case.id not in args.cases):
            continue
        stream_kwargs = dict(case.stream_kwargs)
        if case.kind == "classification":
            stream_kwargs["tokenizer"] = str(tmp / "tokenizer")
        # a peft module is refused by ContinualModule itself (adapters are not sharded yet), a teacher offloaded
        # to the CPU by the distillation callbacks (a sharded teacher stays with its shards)
        expected = ("ran" if getattr(case.cls, "supports_sharded", False) and "peft" not in case.module_kwargs
                    and case.kwargs.get("teacher_device") != "cpu" else "refused")
        try:
            run_stream(tmp / case.id, [case.cls(**case.kwargs)], kind=case.kind, max_steps=3,
                       module_kwargs=dict(case.module_kwargs), stream_kwargs=stream_kwargs,
                       trainer_kwargs=dict(strategy=ModelParallelStrategy(data_parallel_size=args.devices,
                                                                           tensor_parallel_size=1),
                                           accelerator="cpu" if args.cpu else "gpu", devices=args.devices))
            outcome, detail = "ran", ""
        except ClightConfigError as err:
            outcome, detail = "refused", str(err).split(":")[0]
        except Exception as err:  # report, go on with the next case
            outcome, detail = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        rows.append({"case": case.id, "callback": case.cls.__name__, "expected": expected, "outcome": outcome,
                     "ok": outcome == expected, "detail": detail})
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            print(json.dumps(rows[-1]), flush=True)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    print("\n| case | callback | declared | outcome | ok |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['callback']} | {r['expected']} | {r['outcome']} {r['detail']} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
