"""Forward + backward time and peak memory of the causal-LM loss over bf16 logits, four ways.

- ``plain``: ``F.cross_entropy`` of the shifted logits upcast to fp32, what a plain loop (and transformers'
  ``labels=`` loss) does: an fp32 copy of all logits plus its saved log-softmax.
- ``checkpointed chunks``: clight's loss before this tool existed (kept here verbatim for the comparison): the
  labels shifted, the logits sliced into chunks and each chunk's fp32 cross-entropy run under activation
  checkpointing. Autograd differentiates every slice separately, which costs one zero tensor the size of *all*
  the logits and one addition of that size per chunk.
- ``clight``: :func:`clight.losses.causal_lm_nll`, the chunked fp32 NLL as one autograd function whose backward
  writes each chunk of the gradient in place (the eager module's loss).
- ``clight compiled``: :func:`clight.losses.compiled_causal_lm_nll`, one fp32 cross-entropy under
  ``torch.compile`` (the loss of a module with ``compile: true``); its compilation happens in the warm-up.

Peak memory is the rise during the timed steps, the logits' gradient included: ``max_memory_allocated`` on a
GPU, the process's peak resident memory on a Linux CPU (reset before each loss with ``/proc/self/clear_refs``).

The 1.24B Llama of configs/llama_1b_pretraining.yaml has 8 x 2048 tokens x 128,256 vocabulary = 2.1G logits in 32
chunks of 2**26. On the CPU the defaults keep its 32 chunks at 1/16 of the size:

    python tools/bench/loss_speed.py                                   # 8 x 512 x 32,000 logits, 32 chunks
    python tools/bench/loss_speed.py --batch 8 --seq 2048 --vocab 128256 --chunk-elements 67108864   # the GPU shape
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

import clight.losses as losses


def plain(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=-100)


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="none")


def checkpointed_chunks(logits: torch.Tensor, labels: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    batch, width, vocab = logits.shape
    shifted = torch.cat([labels[:, 1:], labels.new_full((batch, 1), -100)], dim=1).reshape(-1)
    flat = logits.reshape(-1, vocab)
    chunk = max(1, chunk_elements // vocab)
    parts = [torch.utils.checkpoint.checkpoint(_token_nll, flat[s : s + chunk], shifted[s : s + chunk],
                                               use_reentrant=False) for s in range(0, flat.shape[0], chunk)]
    return torch.cat(parts).sum() / (labels[:, 1:] != -100).sum()


def clight_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return losses.causal_lm_nll(logits, labels).sum() / (labels[:, 1:] != -100).sum()


def _proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (Linux)."""
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_cpu_peak() -> int | None:
    """Reset the process's peak resident memory to the current one; returns it (None where Linux cannot)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status("VmRSS")
    except OSError:
        return None


def clight_compiled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return losses.compiled_causal_lm_nll()(logits, labels).sum() / (labels[:, 1:] != -100).sum()


WAYS = ["plain", "checkpointed chunks", "clight", "clight compiled"]


def measure(args: argparse.Namespace, name: str) -> dict:
    """Time ``name`` and read its peak memory, then its gradient's largest difference from ``plain``'s."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    losses._LEAN_LOSS_ELEMENTS, losses._LEAN_LOSS_CHUNK = 0, args.chunk_elements  # always the chunked path
    torch.manual_seed(0)
    logits = torch.randn(args.batch, args.seq, args.vocab, device=device).bfloat16().requires_grad_(True)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    fn = {"plain": plain, "checkpointed chunks": lambda x, y: checkpointed_chunks(x, y, args.chunk_elements),
          "clight": clight_loss, "clight compiled": clight_compiled}[name]

    def step() -> None:
        logits.grad = None
        fn(logits, labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (and compilation)
    logits.grad = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_cpu_peak()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = (_proc_status("VmHWM") - base) / 2**30 if base is not None else None
    grad = logits.grad.float()
    logits.grad = None
    plain(logits, labels).backward()
    return {"loss": name, "seconds": statistics.median(times), "peak_gib": peak,
            "grad_diff": (grad - logits.grad.float()).abs().max().item(), "device": str(device),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunk-elements", type=int, default=2**22, help="logit elements per chunk")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=WAYS, help=argparse.SUPPRESS)  # one way, in this process
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args, args.only)))
        return
    # one fresh process per way: freed memory stays with the allocator, so a second way's peak in the same
    # process would be measured against the first way's leftovers
    rows = []
    for name in WAYS:
        cmd = [sys.executable, __file__, "--only", name, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    chunks = -(-args.batch * args.seq // max(1, args.chunk_elements // args.vocab))
    print(f"{rows[0]['device']} · logits {args.batch} x {args.seq} x {args.vocab:,} bf16 "
          f"({args.batch * args.seq * args.vocab / 1e6:,.0f}M) · {chunks} chunks · {rows[0]['threads']} threads · "
          f"median of {args.reps} · one process per loss")
    print("| loss | fwd+bwd ms | × clight | peak extra GiB | max abs grad diff vs plain |\n|---|---|---|---|---|")
    mine = next(r["seconds"] for r in rows if r["loss"] == "clight")
    for r in rows:
        mem = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
        print(f"| {r['loss']} | {r['seconds'] * 1e3:,.0f} | {r['seconds'] / mine:.2f} | {mem} | {r['grad_diff']:.1e} |")


if __name__ == "__main__":
    main()
