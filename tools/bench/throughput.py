"""Training throughput of clight's causal-LM path: tokens/s and model FLOPs utilisation, naive vs callbacks.

Reads a `clight fit` config (model, data, trainer; e.g. configs/llama_1b_pretraining.yaml) and, for each
method, trains two tasks of the config's stream with a fresh Trainer each, as `clight fit` does: a short first
task (`--prime-steps`) so that callbacks have something to protect (a Fisher, an anchor, a mask), then the
second task, of which `--steps` optimizer steps after `--warmup` are timed. The clock runs from the end of the
last warm-up step to the end of the last step, with the device synchronised at both ends and nowhere between,
so it measures everything a training step costs (data loading, forward, loss, backward, callbacks, optimizer).
The same model instance serves every method in turn (its weights keep training; throughput does not depend on
them), so the methods are compared in one process on one device.

    python tools/bench/throughput.py -c configs/llama_1b_pretraining.yaml \
        --methods naive configs/l2_anchor.yaml configs/ewc.yaml configs/gradient_mask_magnitude.yaml \
        -- --trainer.devices 1 --trainer.precision bf16-mixed
    python tools/bench/throughput.py --tiny --steps 3 --warmup 1      # CPU dry run of the same code, tiny model

A method is `naive` or a technique config whose `trainer.callbacks` are used (its model and data are ignored).
Arguments after `--` override the base config, exactly as on the `clight fit` command line.

FLOPs per token follow the convention of the issue's reference (PaLM appendix B without the embedding
exception, causal attention counted once): ``6 N + 6 L d T`` with N all parameters (tied embeddings once), L
layers, d the hidden size and T the sequence length. MFU divides by ``--peak-tflops`` (default: 989 for H100
and H200 dense bf16; none on other devices).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.cli import instantiate_class  # noqa: E402
from lightning.pytorch.strategies import Strategy  # noqa: E402
from reference_loop import TINY as TINY_LLAMA  # noqa: E402
from reference_loop import flops_per_token, peak_tflops  # noqa: E402

from clight.cli import ContinualCLI  # noqa: E402

logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # one Trainer per task

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--model.config", json.dumps(TINY_LLAMA),
    "--model.compile", "false", "--model.optimizer.init_args.fused", "false",
    "--data.init_args.max_length", "64", "--data.init_args.batch_size", "4", "--data.init_args.train_tokenizer_vocab",
    "512", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
]


class ThroughputClock(Callback):
    """Tokens and wall time of the optimizer steps after ``warmup``, synchronised only at the two ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens, self.steps = warmup, 0, 0
        self.t0: float | None = None
        self.seconds = 0.0

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.global_step  # optimizer steps so far in this task
        if done == self.warmup:
            self._sync(pl_module)
            self.t0 = time.perf_counter()
        elif done > self.warmup and self.t0 is not None:
            self.tokens += int(batch["input_ids"].numel())  # blocks are full-length; padding only in a last block
            self.steps = done - self.warmup
            if done == trainer.max_steps:
                self._sync(pl_module)
                self.seconds = time.perf_counter() - self.t0


def _callbacks_of(method: str, estimate_examples: int) -> list[Callback]:
    if method == "naive":
        return []
    spec = yaml.safe_load(Path(method).read_text()) or {}
    entries = (spec.get("trainer") or {}).get("callbacks") or []
    callbacks = [instantiate_class((), entry) for entry in entries]
    for cb in callbacks:  # the task-end estimate (EWC's Fisher, MAS) is not timed: keep the priming task short
        if isinstance(getattr(cb, "num_examples", None), int):
            cb.num_examples = min(cb.num_examples, estimate_examples)
    return callbacks


def measure(cli: ContinualCLI, trainer_kwargs: dict[str, Any], method: str, *, prime_steps: int, warmup: int,
            steps: int, estimate_examples: int = 16) -> dict[str, Any]:
    module, data = cli.model, cli.datamodule
    for p in module.parameters():
        p.requires_grad_(True)
    callbacks = _callbacks_of(method, estimate_examples)
    clock = ThroughputClock(warmup)
    base = {k: v for k, v in trainer_kwargs.items() if k not in ("callbacks", "logger", "max_steps", "max_epochs")}
    base.update(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, max_epochs=-1)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for stage, (extra, max_steps) in enumerate([([], prime_steps), ([clock], warmup + steps)]):
        data.set_stage(stage)
        kwargs = dict(base)
        if isinstance(kwargs.get("strategy"), Strategy):  # a strategy instance binds to the Trainer that uses it
            kwargs["strategy"] = copy.deepcopy(kwargs["strategy"])
        trainer = pl.Trainer(**kwargs, callbacks=[*callbacks, *extra], max_steps=max_steps)
        trainer.fit(module, datamodule=data)
    seq = data.max_length
    flops = flops_per_token(sum(p.numel() for p in module.parameters()), module.backbone.config, seq)
    row = {"method": Path(method).stem, "steps": clock.steps, "tokens": clock.tokens, "seconds": clock.seconds,
           "tokens_per_s": clock.tokens / clock.seconds if clock.seconds else None,
           "tflops_per_s": clock.tokens * flops / clock.seconds / 1e12 if clock.seconds else None,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
           "world_size": trainer.world_size}
    if row["tokens_per_s"] is not None:  # tokens over all ranks
        row["tokens_per_s"] *= trainer.world_size
        row["tflops_per_s"] *= trainer.world_size
    return row


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", type=Path, default=ROOT / "configs" / "llama_1b_pretraining.yaml")
    parser.add_argument("--methods", nargs="+", default=["naive"], help="`naive` or technique configs")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (compilation, allocator)")
    parser.add_argument("--prime-steps", type=int, default=2, help="steps of the first task")
    parser.add_argument("--estimate-examples", type=int, default=16,
                        help="cap on a callback's `num_examples` (its untimed task-end estimate, e.g. EWC's Fisher)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: a dry run of the same code")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {str(args.config)!r} does not exist")
    for method in args.methods:
        if method != "naive" and not Path(method).is_file():
            parser.error(f"--methods: {method!r} is neither `naive` nor an existing config file")
    cli = ContinualCLI(args=["-c", str(args.config), *(TINY if args.tiny else []), *overrides], run=False)
    trainer_kwargs = cli.stream_trainer_kwargs()
    cli.datamodule.prepare_stream()
    cli.model.configure_stream(vocab_size=len(cli.datamodule.tokenizer))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or peak_tflops(device)
    rows = []
    for method in args.methods:
        try:
            row = measure(cli, trainer_kwargs, method, prime_steps=args.prime_steps, warmup=args.warmup,
                          steps=args.steps, estimate_examples=args.estimate_examples)
        except torch.OutOfMemoryError as err:  # report it and go on with the next method
            print(f"{method}: out of memory: {str(err).splitlines()[0]}", flush=True)
            row = {"method": Path(method).stem, "tokens_per_s": None, "tflops_per_s": None, "peak_mem_gib": None,
                   "error": "out of memory"}
            torch.cuda.empty_cache()
        gc.collect()  # the method's callbacks (anchors, Fishers, masks) and optimizer go before the next one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        row["mfu"] = row["tflops_per_s"] / peak if peak and row["tflops_per_s"] else None
        rows.append(row)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            print(json.dumps(row), flush=True)  # each row as it finishes: a run cut short keeps the earlier ones
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    params = sum(p.numel() for p in cli.model.parameters())
    print(f"\n{device} · {params / 1e6:,.1f}M parameters · batch {cli.datamodule.batch_size} x "
          f"{cli.datamodule.max_length} tokens · precision {trainer_kwargs.get('precision')} · "
          f"compile {cli.model.compile} · torch {torch.__version__}")
    naive = next((r for r in rows if r["method"] == "naive"), None)
    print("| method | tokens/s | MFU | × naive | peak GiB |\n|---|---|---|---|---|")
    for r in rows:
        if r["tokens_per_s"] is None:
            print(f"| {r['method']} | {r.get('error', 'failed')} | — | — | — |")
            continue
        ratio = r["tokens_per_s"] / naive["tokens_per_s"] if naive and naive["tokens_per_s"] else None
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "—"
        print(f"| {r['method']} | {r['tokens_per_s']:,.0f} | {mfu} | {ratio:.3f} | {mem} |" if ratio else
              f"| {r['method']} | {r['tokens_per_s']:,.0f} | {mfu} | — | {mem} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "parameters": params, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
