"""Run tiny streams under 2-process CPU FSDP2 (Lightning's ``ModelParallelStrategy``, gloo) and under DDP in the
same job, so tests/test_sharded.py can compare them: the same data-parallel training must reach the same weights.

For each scenario every rank saves ``OUT/<scenario>/<strategy>-rank<r>.pt``: the module's full weights (gathered
from the shards), the callback's state and the result matrices; the runs also leave their stream checkpoints
under ``OUT/<scenario>/<strategy>/``. A ``resume_<scenario>`` crashes an FSDP and a DDP run of the scenario mid-way
through its second task and resumes it (Lightning's distributed checkpoint, then the stream checkpoint).

Usage: python tests/sharded_harness_script.py OUT_DIR SCENARIO...   (Lightning's launcher re-runs this for rank 1)
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "callbacks")]
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from cases import case_by_id  # noqa: E402
from clight_testing import CrashAt, SimulatedCrash, run_stream  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy  # noqa: E402

from clight.sharding import gather_full, sharded_numel  # noqa: E402

# scenario -> (contract case id or None for no callback, model kind[, keyword arguments replacing the case's])
SCENARIOS = {
    "naive": (None, "classification"),
    "naive_causal_lm": (None, "causal_lm"),
    "l2_anchor": ("l2_anchor", "classification"),
    "freeze_schedule": ("freeze_schedule", "classification"),
    "replay_per_batch": ("replay_per_batch", "classification"),
    "replay_causal_lm": ("replay_causal_lm", "causal_lm"),
    "hft": ("hft", "classification"),
    "der": ("der", "classification"),
    "ewc": ("ewc", "classification"),
    "online_ewc_true_fisher_causal_lm": ("online_ewc_true_fisher_causal_lm", "causal_lm"),
    "mas": ("mas", "classification"),
    "si": ("si", "classification"),
    # samples smaller than the tensors, so each rank's share of the strided sample starts at its own offset; the
    # global scope at 0.9 because over a quarter of all gradient entries (unused embedding rows) are exactly 0
    "gmask_magnitude": ("gmask_magnitude", "classification", {"sample_size": 64}),
    "gmask_magnitude_global": ("gmask_magnitude", "classification",
                               {"scope": "global", "sample_size": 64, "fraction": 0.9}),
    "gmask_importance_path": ("gmask_importance", "classification"),
    "gmask_importance_fisher": ("gmask_importance", "classification", {"importance": "fisher"}),
    "gmask_sparse_reset": ("gmask_sparse", "classification"),
    "distillation": ("distillation", "classification"),
    "distillation_causal_lm": ("distillation_causal_lm", "causal_lm", {"teacher_device": "same"}),
    "feature_distillation": ("feature_distillation", "classification"),
    "ema": ("ema", "classification"),  # decay 0.5 with warmup, continue_from fast, new classes' rows fast
    "ema_continue_from_ema": ("ema", "classification", {"continue_from": "ema", "warmup": False}),
}


def strategy(name: str):
    timeout = timedelta(minutes=2)  # a rank that raised leaves the other in a collective: fail it soon
    if name == "fsdp":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timeout)
    return DDPStrategy(timeout=timeout)


def record(fn: Callable[..., list[float]], into: list[list[float]]) -> Callable[..., list[float]]:
    def wrapped(*args: Any) -> list[float]:
        into.append(fn(*args))
        return into[-1]
    return wrapped


@torch.no_grad()
def swap_probe(callback: Any, module: Any) -> dict[str, torch.Tensor]:
    """EMAWeights' validation swap on the trained module: halve the weights, swap the EMA in and out, and record
    the logits of a fixed batch at each point. Under FSDP2 a unit left gathered by the previous forward would
    serve stale weights after a swap; the logits show it."""
    from clight.callbacks._utils import trainable_parameters
    from clight.callbacks.weight_space.base import load_weights_

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, module.backbone.config.vocab_size, (2, 8), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    module.eval()
    out = {"before": module(batch)["logits"]}
    load_weights_(module, {n: gather_full(p.detach()) * 0.5 for n, p in trainable_parameters(module).items()})
    out["perturbed"] = module(batch)["logits"]
    callback._swap(module)  # the EMA (the weights before halving: the task end made them the model)
    out["swapped"] = module(batch)["logits"]
    callback._swap(module)
    out["back"] = module(batch)["logits"]
    return out


def run(scenario: str, out: Path, strategy_name: str, *, crash: bool = False, resume: bool = False) -> None:
    case_id, kind, *overrides = SCENARIOS[scenario.removeprefix("resume_")]
    case = case_by_id(case_id) if case_id else None
    callbacks = [case.cls(**{**case.kwargs, **(overrides[0] if overrides else {})})] if case else []
    thresholds: list[list[float]] = []
    if case_id == "gmask_magnitude":  # record every step's thresholds: they must be the full tensors' on each rank
        import clight.callbacks.masking.gradient_mask as gradient_mask

        gradient_mask.thresholds = record(gradient_mask.thresholds, thresholds)
    extra = [CrashAt(task=1, step=5)] if crash else []
    results, module = run_stream(
        out / strategy_name, [*callbacks, *extra], kind=kind, max_steps=6, resume=resume,
        module_kwargs=dict(case.module_kwargs) if case else None,
        stream_kwargs=dict(case.stream_kwargs) if case else None,
        trainer_kwargs=dict(strategy=strategy(strategy_name), devices=2, accelerator="cpu"))
    held, total = sharded_numel(module)
    weights = {k: v.clone() for k, v in gather_full(module.state_dict()).items()}  # a collective under FSDP
    callback_state = callbacks[0].state_dict() if callbacks else {}  # gathered by the callback (a collective)
    probe = swap_probe(callbacks[0], module) if case_id == "ema" else {}  # changes the weights: after saving them
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.save({"module": weights, "callback": callback_state, "results": results["matrices"],
                "timing": results["timing"], "held": held, "total": total, "thresholds": thresholds, "swap": probe},
               out / f"{strategy_name}{'-resumed' if resume else ''}-rank{rank}.pt")


def main() -> None:
    out, scenarios = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    for scenario in scenarios:
        (out / scenario).mkdir(parents=True, exist_ok=True)
        try:
            if scenario.startswith("resume_"):
                for name in ("fsdp", "ddp"):
                    run(scenario, out / scenario, name)  # the uninterrupted reference
                    try:
                        run(scenario, out / scenario / "crash", name, crash=True)
                    except SimulatedCrash:
                        pass
                    run(scenario, out / scenario / "crash", name, resume=True)
            else:
                run(scenario, out / scenario, "fsdp")
                run(scenario, out / scenario, "ddp")
        except Exception:  # recorded for the test of this scenario
            (out / scenario / f"error-rank{rank}.txt").write_text(traceback.format_exc())


if __name__ == "__main__":
    main()
