"""Selective Self-Rehearsal (SSR): train on the model's own answers where they are already right, and on the gold
answers elsewhere; optionally rehearse earlier tasks on pseudo-examples the current model writes itself."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from clight.callback import ContinualCallback, stream_seed
from clight.callbacks._utils import check_arg, eval_mode
from clight.contracts import InstructionExamples, TextGenerator
from clight.datamodules.causal_lm import pad_lm_batch
from clight.heads.generation import decode_answers, exact_matches, left_pad, rouge_l
from clight.task import TaskInfo

Judge = Literal["rouge_l", "exact_match", "llm"]
_JUDGE_PROMPT = ("Question: {prompt}\nReference answer: {reference}\nProposed answer: {answer}\n"
                 "Is the proposed answer correct? Answer yes or no.")


class SelectiveSelfRehearsal(ContinualCallback):
    """Before a task trains, the current model answers the task's training prompts; where a judge accepts its own
    answer, the model trains on that answer instead of the gold one.

    Gupta et al. 2024, "Selective Self-Rehearsal: A Fine-Tuning Approach to Improve Generalization in Large
    Language Models": training on answers the model would give anyway moves it less, so it keeps more of its
    general ability. The judge is ROUGE-L or exact match against the gold answer with a ``threshold``, or ``llm``:
    the model itself asked whether its answer is correct (the probability of "yes" against "no"). Answers are
    greedy with the stream's token budget, so every rank and every resume decides the same; the decisions and
    answers are kept in the state, so a resumed task does not generate again. ``synthetic_per_task`` adds the
    rehearsal-free variant: at each task start the current model writes that many pseudo-examples of every
    earlier task (it continues the prompts' common beginning, sampled from a seeded generator, then answers
    greedily), which train beside the task's own data; no example of an earlier task is stored.

    Args:
        judge: ``rouge_l``, ``exact_match`` or ``llm``.
        threshold: the judge's score at or above which the model's own answer is used.
        synthetic_per_task: pseudo-examples of each earlier task per later task (0: none).
        seed: seed of the pseudo-examples' sampling; empty: the datamodule's ``seed``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.SelectiveSelfRehearsal
              init_args: {judge: rouge_l, threshold: 0.5}
    """

    module_contracts = (TextGenerator,)
    stream_contracts = (InstructionExamples,)
    sharded_reason = "its generation runs the whole model on every rank outside the training step"

    def __init__(self, *, judge: Judge = "rouge_l", threshold: float = 0.5, synthetic_per_task: int = 0,
                 seed: int | None = None) -> None:
        super().__init__()
        check_arg(judge in ("rouge_l", "exact_match", "llm"), "judge", "`rouge_l`, `exact_match` or `llm`", judge,
                  "See the `SelectiveSelfRehearsal` docstring.")
        check_arg(isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1,
                  "threshold", "a number in [0, 1]", threshold, "E.g. `threshold: 0.5`.")
        check_arg(isinstance(synthetic_per_task, int) and synthetic_per_task >= 0, "synthetic_per_task",
                  "an integer >= 0", synthetic_per_task, "0 turns the pseudo-examples off.")
        check_arg(seed is None or (isinstance(seed, int) and seed >= 0), "seed", "empty or an integer >= 0", seed,
                  "Leave it empty to use the datamodule's seed.")
        self.judge, self.threshold = judge, float(threshold)
        self.synthetic_per_task, self.seed = synthetic_per_task, seed
        self.decisions: dict[str, dict[str, Tensor]] = {}  # task index -> accepted, own answers, scores
        self.prefixes: dict[str, str] = {}  # task index -> the common beginning of its prompts
        self.synthetic: dict[str, dict[str, Tensor]] = {}  # task index -> pseudo-examples trained with it

    @property
    def state_key(self) -> str:
        return self._generate_state_key(judge=self.judge, threshold=self.threshold,
                                        synthetic_per_task=self.synthetic_per_task)

    # ---- task start: decide the targets (once), then apply them ---------------------------------------------
    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        dm, key = trainer.datamodule, str(task.index)
        examples = dm.train_examples[task.index]
        self.prefixes.setdefault(key, _common_prefix([ex["prompt"] for ex in examples]))
        if key not in self.decisions:  # a resumed task keeps the decisions it made (the model has moved since)
            self.decisions[key] = self._decide(trainer, pl_module, examples)
        dm.train_examples[task.index] = self._rewrite(dm, examples, self.decisions[key])
        accepted = self.decisions[key]["accepted"]
        rank_zero_info(f"SelectiveSelfRehearsal: task {task.name!r}: the model's own answer is kept for "
                       f"{int(accepted.sum())}/{len(accepted)} examples")
        if self.synthetic_per_task and task.index > 0:
            if key not in self.synthetic:
                self.synthetic[key] = self._synthesize(trainer, pl_module, task.index)
            dm.extra_train_examples = _as_examples(self.synthetic[key], task.index)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.synthetic_per_task:
            trainer.datamodule.extra_train_examples = []

    def _decide(self, trainer: pl.Trainer, pl_module: pl.LightningModule, examples: list[dict[str, Any]]
                ) -> dict[str, Tensor]:
        dm = trainer.datamodule
        answers = self._answer(trainer, pl_module, [ex["prompt_ids"] for ex in examples])
        texts = decode_answers(dm.tokenizer, answers, self._stops(dm))
        refs = [ex["reference"] for ex in examples]
        if self.judge == "rouge_l":
            scores = rouge_l(texts, refs)
        elif self.judge == "exact_match":
            scores = exact_matches(texts, refs)
        else:
            scores = self._llm_judge(trainer, pl_module, [ex["prompt"] for ex in examples], refs, texts)
        lengths = torch.tensor([len(a) for a in _trimmed(answers, self._stops(dm))], dtype=torch.int32)
        return {"accepted": (scores >= self.threshold) & (lengths > 0), "answers": answers.to(torch.int32),
                "lengths": lengths, "scores": scores.float()}

    def _rewrite(self, dm: Any, examples: list[dict[str, Any]], decision: dict[str, Tensor]) -> list[dict[str, Any]]:
        eos = self._stops(dm)[0]
        out = []
        for ex, ok, row, n in zip(examples, decision["accepted"].tolist(), decision["answers"], decision["lengths"]):
            if not ok:
                out.append(ex)
                continue
            own, prompt = row[: int(n)].tolist(), ex["prompt_ids"]
            out.append({**ex, "input_ids": (prompt + own + [eos])[: dm.max_length],
                        "labels": ([-100] * len(prompt) + own + [eos])[: dm.max_length]})
        return out

    # ---- generation -------------------------------------------------------------------------------------------
    def _stops(self, dm: Any) -> list[int]:
        tok = dm.tokenizer
        return [t for t in dict.fromkeys([tok.eos_token_id, tok.pad_token_id]) if t is not None]

    @torch.no_grad()
    def _answer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prompts: list[list[int]], *,
                sample: bool = False, max_new_tokens: int | None = None) -> Tensor:
        """Every prompt's answer, padded to the budget with the stop token, ``(N, max_new_tokens)``. Every rank
        generates all of them: identical weights and greedy decoding (or one seeded draw) give identical answers."""
        dm, stops = trainer.datamodule, self._stops(trainer.datamodule)
        budget = max_new_tokens or dm.max_new_tokens
        out = torch.full((len(prompts), budget), stops[0], dtype=torch.long)
        size = getattr(dm, "eval_batch_size", 16)
        with eval_mode(pl_module), trainer.precision_plugin.forward_context():
            for start in range(0, len(prompts), size):
                ids, mask = left_pad(prompts[start : start + size], stops[-1])
                new = pl_module.generate_tokens(ids.to(pl_module.device), mask.to(pl_module.device),
                                                max_new_tokens=budget, eos_token_id=stops, pad_token_id=stops[-1],
                                                do_sample=sample)
                out[start : start + len(ids), : new.shape[1]] = new.cpu()
        return out

    def _llm_judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prompts: list[str], refs: list[str],
                   answers: list[str]) -> Tensor:
        """P(yes) / (P(yes) + P(no)) of the model's next token after the judge prompt, per example."""
        dm = trainer.datamodule
        tok = dm.tokenizer
        yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
        judged = [tok(dm.format_prompt(_JUDGE_PROMPT.format(prompt=p, reference=r, answer=a)),
                      add_special_tokens=False)["input_ids"] for p, r, a in zip(prompts, refs, answers)]
        scores = []
        with torch.no_grad(), eval_mode(pl_module), trainer.precision_plugin.forward_context():
            for start in range(0, len(judged), 16):
                rows = judged[start : start + 16]
                batch = pad_lm_batch([{"input_ids": r, "task": 0} for r in rows], self._stops(dm)[-1])
                batch = {k: batch[k].to(pl_module.device) for k in ("input_ids", "attention_mask")}
                last = torch.tensor([len(r) - 1 for r in rows], device=pl_module.device)
                logits = pl_module(batch)["logits"][torch.arange(len(rows)), last].float()  # (B, V), last prompt token
                scores.append(logits[:, [yes, no]].softmax(-1)[:, 0].cpu())
        return torch.cat(scores)

    def _synthesize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task_index: int) -> dict[str, Tensor]:
        """Pseudo-examples of every earlier task: a sampled continuation of the task's prompt beginning, answered
        greedily, as token ids (``input_ids``, ``labels``) padded into tensors."""
        dm, stops = trainer.datamodule, self._stops(trainer.datamodule)
        tok, ids, labels = dm.tokenizer, [], []
        for j in range(task_index):
            prefix = self.prefixes.get(str(j), "")
            start = tok(prefix, add_special_tokens=False)["input_ids"]
            seed = stream_seed(trainer, self.seed) * 1_000_003 + task_index * 1009 + j
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tails = self._answer(trainer, pl_module, [start] * self.synthetic_per_task, sample=True)
            newline = set(tok("\n", add_special_tokens=False)["input_ids"])
            prompts = [prefix + t.split("\n")[0] for t in decode_answers(tok, tails, [*stops, *newline])]
            prompt_ids = [tok(dm.format_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]
            for p, own in zip(prompt_ids, _trimmed(self._answer(trainer, pl_module, prompt_ids), stops)):
                ids.append((p + own + [stops[0]])[: dm.max_length])
                labels.append(([-100] * len(p) + own + [stops[0]])[: dm.max_length])
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int32)
        width = int(lengths.max()) if len(ids) else 0
        pad = torch.full((len(ids), width), -100, dtype=torch.int32)
        return {"input_ids": _padded(ids, pad.clone()), "labels": _padded(labels, pad.clone()), "lengths": lengths}

    # ---- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decisions": {k: dict(v) for k, v in self.decisions.items()},
                "prefixes": dict(self.prefixes), "synthetic": {k: dict(v) for k, v in self.synthetic.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.decisions = {k: dict(v) for k, v in state_dict["decisions"].items()}
        self.prefixes = dict(state_dict["prefixes"])
        self.synthetic = {k: dict(v) for k, v in state_dict["synthetic"].items()}


def _common_prefix(texts: list[str]) -> str:
    """The longest beginning every text shares, cut back to a word boundary."""
    if not texts:
        return ""
    first, last = min(texts), max(texts)
    n = next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))
    prefix = first[:n]
    return prefix if n == len(first) or prefix.endswith((" ", '"', "`")) else prefix[: prefix.rfind(" ") + 1]


def _trimmed(answers: Tensor, stops: list[int]) -> list[list[int]]:
    """Each row of generated tokens up to its first stop token."""
    out = []
    for row in answers.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:end])
    return out


def _padded(rows: list[list[int]], into: Tensor) -> Tensor:
    for i, row in enumerate(rows):
        into[i, : len(row)] = torch.tensor(row, dtype=into.dtype)
    return into


def _as_examples(synthetic: dict[str, Tensor], task_index: int) -> list[dict[str, Any]]:
    out = []
    for ids, labels, n in zip(synthetic["input_ids"], synthetic["labels"], synthetic["lengths"].tolist()):
        out.append({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist(), "task": task_index})
    return out
