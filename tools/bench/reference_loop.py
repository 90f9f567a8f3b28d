"""The plain-PyTorch reference that tools/bench/throughput.py is compared against, on the same device in the same run.

No Lightning and no clight: the model of a `clight fit` config (``model.config``) built with
``AutoModelForCausalLM.from_config`` (random init, SDPA attention), random token ids of the config's batch shape,
``model(input_ids, labels=input_ids).loss`` under bf16 autocast, fused AdamW with the config's hyper-parameters.
It times ``--steps`` optimizer steps after ``--warmup``, eager and then (``--compile``) with ``torch.compile`` of
the same model, and prints tokens/s and MFU with the same FLOPs convention as throughput.py (``6 N + 6 L d T``).

    python tools/bench/reference_loop.py -c configs/llama_1b_pretraining.yaml --compile
    python tools/bench/reference_loop.py --tiny --steps 3 --warmup 1        # CPU dry run, tiny model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[2]
# shared with tools/bench/throughput.py, so both tools time the same tiny model and count FLOPs the same way
TINY = dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known accelerator, by name (None for others, e.g. the CPU)."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def flops_per_token(params: int, config, seq_len: int) -> float:
    """Training FLOPs per token, ``6 N + 6 L d T`` (PaLM appendix B without the embedding exception)."""
    return 6.0 * params + 6.0 * config.num_hidden_layers * config.hidden_size * seq_len


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", type=Path, default=ROOT / "configs" / "llama_1b_pretraining.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    parser.add_argument("--tiny", action="store_true", help="tiny model, batch 4 x 64, on CPU in fp32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.config.is_file():
        parser.error(f"--config {str(args.config)!r} does not exist")
    spec = yaml.safe_load(args.config.read_text())
    model_cfg = dict(TINY if args.tiny else spec["model"]["config"])
    data = spec["data"]["init_args"]
    batch, seq = (4, 64) if args.tiny else (data["batch_size"], data["max_length"])
    opt = dict(spec["model"].get("optimizer", {}).get("init_args", {}))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    opt["fused"] = bool(opt.get("fused")) and device.type == "cuda"
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_cfg.pop("model_type"), **model_cfg)
    config._attn_implementation = "sdpa"
    with device:  # initialise on the device: a 1B model's CPU init alone takes longer than the timed steps
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **opt)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    params = sum(p.numel() for p in model.parameters())
    flops = flops_per_token(params, config, seq)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_tflops(name)
    rows = []

    def run(label: str, forward) -> None:
        def step() -> None:
            with autocast:
                loss = forward(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, args.steps, args.warmup, device)
        tps = args.steps * batch * seq / seconds
        row = {"method": label, "tokens_per_s": tps, "tflops_per_s": tps * flops / 1e12,
               "mfu": tps * flops / 1e12 / peak if peak else None,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
        rows.append(row)
        print(json.dumps(row), flush=True)

    run("plain eager", model)
    if args.compile:
        run("plain compiled", torch.compile(model))
    print(f"\n{name} · {params / 1e6:,.1f}M parameters · batch {batch} x {seq} · torch {torch.__version__}")
    print("| loop | tokens/s | MFU | peak GiB |\n|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "—"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "—"
        print(f"| {r['method']} | {r['tokens_per_s']:,.0f} | {mfu} | {mem} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "parameters": params, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
