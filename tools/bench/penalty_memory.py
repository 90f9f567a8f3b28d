"""Peak memory of one quadratic-penalty step (EWC, MAS, SI, L2Anchor) at the scale of a 1B-parameter model.

The callbacks add ``λ Ω (θ − θ*)`` to the gradients with ``add_quadratic_penalty_grad_``, in groups of about
``2**27`` entries so that its one temporary (``θ − θ*``) stays that small. This script builds the penalty's
inputs at the Llama-3.2-1B parameter count (parameters, gradients, anchor and importance, in ``--dtype``, laid
out as the model's tensors), then runs one penalty step in a fresh process per variant and reports how far the
process's peak resident memory rose during that step:

- ``grouped``: the callbacks' code as it is;
- ``one pass``: the same code with a single group (how it worked before the grouping), for comparison.

    python tools/bench/penalty_memory.py                          # 1.236B entries in bf16: ~10 GB of inputs
    python tools/bench/penalty_memory.py --dtype float32 --params 600e6

CPU only (resident memory is what the kernel reports); on a GPU the same temporaries land in
``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from clight.functional import penalties

# the tensors of a Llama-3.2-1B (tied embeddings): 16 layers of attention, MLP and two norms, then the embedding
HIDDEN, FFN, KV, LAYERS, VOCAB = 2048, 8192, 512, 16, 128256
LAYER_SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (FFN, HIDDEN), (FFN, HIDDEN),
                (HIDDEN, FFN), (HIDDEN,), (HIDDEN,)]


def shapes(total: int) -> list[tuple[int, ...]]:
    """The model's tensor shapes, with as many layers as fit ``total`` entries (the embedding always)."""
    out: list[tuple[int, ...]] = [(VOCAB, HIDDEN), (HIDDEN,)]
    per_layer = sum(torch.Size(s).numel() for s in LAYER_SHAPES)
    layers = max(0, (total - VOCAB * HIDDEN - HIDDEN) // per_layer)
    return out + LAYER_SHAPES * layers


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(total: int, dtype: torch.dtype, one_pass: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    layout = shapes(total)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in layout]
    grads = [torch.zeros_like(p) for p in params]
    anchors = [torch.zeros_like(p) for p in params]  # θ − θ* = θ
    importances = [torch.rand(s, generator=gen, dtype=dtype) for s in layout]
    if one_pass:
        penalties._GROUP_ELEMENTS = 1 << 62
    before = peak_mb()
    t0 = time.perf_counter()
    penalties.add_quadratic_penalty_grad_(grads, params, anchors, importances, 1.0)
    seconds = time.perf_counter() - t0
    entries = sum(p.numel() for p in params)
    expected = float(importances[0].reshape(-1)[0]) * float(params[0].reshape(-1)[0])  # g = λ Ω (θ − θ*), λ = 1
    if abs(float(grads[0].reshape(-1)[0]) - expected) > 1e-2 * abs(expected):
        raise SystemExit(f"wrong gradient: {float(grads[0].reshape(-1)[0])} vs {expected}")
    return {"variant": "one pass" if one_pass else "grouped", "entries": entries, "dtype": str(dtype),
            "inputs_mb": 4 * entries * params[0].element_size() / 2**20, "peak_before_mb": before,
            "step_rise_mb": peak_mb() - before, "step_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1.236e9, help="entries (default: Llama-3.2-1B's)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--child", choices=["grouped", "one-pass"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.child:
        print(json.dumps(child(int(args.params), dtype, args.child == "one-pass")))
        return
    rows = []
    for variant in ("grouped", "one-pass"):
        out = subprocess.run([sys.executable, __file__, "--params", str(args.params), "--dtype", args.dtype,
                              "--child", variant], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{variant} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{rows[0]['entries'] / 1e9:.3f}B entries in {args.dtype}; inputs (θ, g, θ*, Ω): "
          f"{rows[0]['inputs_mb']:,.0f} MB; group size {penalties._GROUP_ELEMENTS:,} entries")
    print("| variant | peak memory rise during the step | seconds |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['step_rise_mb']:,.0f} MB | {r['step_seconds']:.2f} |")


if __name__ == "__main__":
    main()
