"""FSDP check of every callback of the contract table (tests/callbacks/cases*.py) on a GPU machine.

Lightning 2.6 runs FSDP only on CUDA (`strategy='fsdp'` with `accelerator='cpu'` is refused at Trainer
construction; Lightning-AI/pytorch-lightning#21812 tracks CPU support), so this cannot be a CPU test. Each case
runs the same tiny two-task stream the contract harness uses (a tiny BERT or Llama built from a config; the
classification tokenizer is a byte-level BPE trained here, so no model package is needed) under
`FSDPStrategy` on the visible GPUs, and the outcome must match the callback's declaration: a callback with
`supports_sharded = True` must finish the stream, every other one must be refused in `setup` with a
`ClightConfigError`. With one GPU the parameters are wrapped and flattened by FSDP but not split; run it with
`--devices 2` (or more) where there are several GPUs to split them for real.

    python tools/fsdp_smoke.py --devices 1
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
from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402

from clight.datamodules.causal_lm import train_bpe_tokenizer  # noqa: E402
from clight.errors import ClightConfigError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--cases", nargs="*", default=None, help="case ids (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clight-fsdp-"))
    texts = [json.loads(line)["text"] for line in (WORDNET / "train.jsonl").read_text().splitlines()]
    train_bpe_tokenizer(texts, 2000).save_pretrained(str(tmp / "tokenizer"))
    rows = []
    for case in CASES:
        if case.id == "probe" or (args.cases and case.id not in args.cases):
            continue
        stream_kwargs = dict(case.stream_kwargs)
        if case.kind == "classification":
            stream_kwargs["tokenizer"] = str(tmp / "tokenizer")
        expected = "ran" if getattr(case.cls, "supports_sharded", False) else "refused"
        try:
            run_stream(tmp / case.id, [case.cls(**case.kwargs)], kind=case.kind, max_steps=3,
                       module_kwargs=dict(case.module_kwargs), stream_kwargs=stream_kwargs,
                       trainer_kwargs=dict(strategy=FSDPStrategy(), accelerator="gpu", devices=args.devices))
            outcome, detail = "ran", ""
        except ClightConfigError as err:
            outcome, detail = "refused", str(err).split(":")[0]
        except Exception as err:  # report, go on with the next case
            outcome, detail = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        rows.append({"case": case.id, "callback": case.cls.__name__, "expected": expected, "outcome": outcome,
                     "ok": outcome == expected, "detail": detail})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | callback | declared | outcome | ok |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['callback']} | {r['expected']} | {r['outcome']} {r['detail']} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
