"""Forward + backward time (and, on a GPU, peak memory) of the causal-LM loss over bf16 logits, three ways.

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

The 1.24B Llama of configs/llama_1b_pretraining.yaml has 8 x 2048 tokens x 128,256 vocabulary = 2.1G logits in 32
chunks of 2**26. On the CPU the defaults keep its 32 chunks at 1/16 of the size:

    python tools/loss_speed.py                                   # 8 x 512 x 32,000 logits, 32 chunks
    python tools/loss_speed.py --batch 8 --seq 2048 --vocab 128256 --chunk-elements 67108864   # the GPU shape
"""

from __future__ import annotations

import argparse
import statistics
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


def clight_compiled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return losses.compiled_causal_lm_nll()(logits, labels).sum() / (labels[:, 1:] != -100).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunk-elements", type=int, default=2**22, help="logit elements per chunk")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    losses._LEAN_LOSS_ELEMENTS, losses._LEAN_LOSS_CHUNK = 0, args.chunk_elements  # always the chunked path
    torch.manual_seed(0)
    logits = torch.randn(args.batch, args.seq, args.vocab, device=device).bfloat16().requires_grad_(True)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    chunks = -(-args.batch * args.seq // max(1, args.chunk_elements // args.vocab))
    print(f"{device} · logits {args.batch} x {args.seq} x {args.vocab:,} bf16 ({logits.numel() / 1e6:,.0f}M) · "
          f"{chunks} chunks · {torch.get_num_threads()} threads · median of {args.reps}")
    ways = {"plain": plain, "checkpointed chunks": lambda x, y: checkpointed_chunks(x, y, args.chunk_elements),
            "clight": clight_loss, "clight compiled": clight_compiled}
    grads, rows = {}, []
    for name, fn in ways.items():
        def step(fn=fn) -> None:
            logits.grad = None
            fn(logits, labels).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
        grads[name] = logits.grad.float()
        rows.append((name, statistics.median(times), peak))
    print("| loss | fwd+bwd ms | × clight | peak extra GiB | max abs grad diff vs plain |\n|---|---|---|---|---|")
    mine = dict((n, t) for n, t, _ in rows)["clight"]
    for name, seconds, peak in rows:
        diff = (grads[name] - grads["plain"]).abs().max().item()
        mem = f"{peak:.2f}" if peak is not None else "—"
        print(f"| {name} | {seconds * 1e3:,.0f} | {seconds / mine:.2f} | {mem} | {diff:.1e} |")


if __name__ == "__main__":
    main()
