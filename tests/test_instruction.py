"""Instruction streams judged by generation, multiple-choice and perplexity probes, and Selective Self-Rehearsal,
on a microscopic Llama with a BPE tokenizer trained on the committed LLM stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from clight_testing import LLM, run_stream, tiny_module, tiny_stream
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import clight.heads.instruction as instruction
from clight.callbacks import SelectiveSelfRehearsal
from clight.errors import ClightConfigError
from clight.losses import causal_lm_nll
from clight.task import TaskInfo


def _prepared(**kwargs):
    module, data = tiny_module("instruction"), tiny_stream("instruction", **kwargs)
    data.prepare_stream()
    module.configure_stream(vocab_size=len(data.tokenizer), eval_kinds=data.eval_kinds, tokenizer=data.tokenizer)
    return module.eval(), data


def test_an_instruction_stream_reports_generation_metrics_probes_and_samples(tmp_path: Path) -> None:
    results, module = run_stream(tmp_path, [], kind="instruction", max_steps=2)
    assert results["primary_metric"] == "rouge_l"
    assert list(results["matrices"]) == ["rouge_l", "exact_match", "ppl"]
    assert all(len(m["initial"]) == 2 and len(m["matrix"]) == 2 for m in results["matrices"].values())
    probes = results["probes"]
    assert probes["tasks"] == ["word-meaning", "prose-ppl"] and list(probes["matrices"]) == ["mc_acc", "mc_acc_norm",
                                                                                              "ppl"]
    mc = probes["matrices"]["mc_acc"]
    assert mc["initial"][0] is not None and mc["initial"][1] is None  # the ppl probe has no accuracy
    assert set(probes["retention"]) == {"word-meaning", "prose-ppl"}
    ppl = probes["retention"]["prose-ppl"]["ppl"]
    assert ppl["retention"] == pytest.approx(ppl["initial"] / ppl["final"])  # lower is better: initial / final
    acc = EventAccumulator(str(tmp_path / "tensorboard" / tmp_path.name), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars, texts = set(acc.Tags()["scalars"]), set(acc.Tags()["tensors"])
    assert {"eval/word-meaning/mc_acc", "eval/prose-ppl/ppl", "stream/retention/word-meaning/mc_acc",
            "eval/man-commands/rouge_l"} <= scalars
    assert {"samples/man-commands/text_summary", "samples/hypernyms/text_summary"} <= texts
    steps = [e.step for e in acc.Tensors("samples/man-commands/text_summary")]
    assert steps == [0, 2, 4]  # the initial evaluation, then after each task, on the stream's step axis
    assert len(module.head.samples[0]) == 4 and set(module.head.samples[0][0]) == {"prompt", "reference", "generated"}


def test_multiple_choice_scores_each_choice_by_its_log_likelihood() -> None:
    module, data = _prepared()
    probe = data.probe_names.index("word-meaning")
    items = data.probe_examples[probe][:3]
    batch = data._collate_eval(items)
    metrics = module.head.new_metrics(len(data.task_names) + probe)
    module.head.update_metrics(metrics, batch, module(batch), batch["valid"], len(data.task_names) + probe)
    right = []
    with torch.no_grad():  # each choice on its own, as a continuation of the context
        for ex in items:
            scores = []
            for choice in ex["choices"]:
                ids = torch.tensor([ex["context"] + choice])
                labels = torch.tensor([[-100] * len(ex["context"]) + choice])
                logits = module({"input_ids": ids, "attention_mask": torch.ones_like(ids)})["logits"]
                scores.append(-float(causal_lm_nll(logits, labels).sum()))
            right.append(float(max(range(len(scores)), key=scores.__getitem__) == ex["answer"]))
    assert float(metrics["mc_acc"].compute()) == pytest.approx(sum(right) / len(right))


def test_exact_match_and_rouge_l_score_the_greedy_answers(monkeypatch) -> None:
    module, data = _prepared()
    examples = data.test_examples[0][:2]
    answers = [examples[0]["reference"], "a wrong answer"]
    tokens = [data.tokenizer(a, add_special_tokens=False)["input_ids"] + [data._eos()] for a in answers]
    width = max(map(len, tokens))

    def fake_generate(backbone, input_ids, attention_mask, **kwargs):
        assert attention_mask[:, -1].all()  # left padded: every prompt ends at the last column
        return torch.tensor([t + [data._pad()] * (width - len(t)) for t in tokens])

    monkeypatch.setattr(instruction, "greedy_generate", fake_generate)
    batch = data._collate_eval(examples)
    metrics = module.head.new_metrics(0)
    module.head.update_metrics(metrics, batch, module(batch), batch["valid"], 0, backbone=module.backbone)
    values = module.head.compute_metrics(metrics)
    assert values["exact_match"] == 0.5 and 0.5 <= values["rouge_l"] < 1.0
    assert module.head.samples[0][1] == {"prompt": examples[1]["prompt"], "reference": examples[1]["reference"],
                                         "generated": "a wrong answer"}


def test_the_chat_template_formats_prompts_and_a_tokenizer_without_one_is_refused() -> None:
    _, data = _prepared()
    data.template = "chat"
    with pytest.raises(ClightConfigError, match="`template: chat`: the tokenizer has no chat template"):
        data.format_prompt("hi")
    data.tokenizer.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    assert data.format_prompt("hi") == "<u>hi</u><a>"


def test_probes_are_checked_before_training(tmp_path: Path) -> None:
    bad = [{"name": "nope", "file": str(LLM / "probes.jsonl")}]
    with pytest.raises(ClightConfigError, match=r"`probes\[nope\]`: .* has no rows for it"):
        tiny_stream("instruction", probes=bad).prepare_stream()
    clash = [{"name": "hypernyms", "file": str(LLM / "probes.jsonl")}]
    with pytest.raises(ClightConfigError, match=r"`probes`: the names \['hypernyms'\] are used twice"):
        tiny_stream("instruction", probes=clash).prepare_stream()
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"task": "odd", "question": "?"}) + "\n")
    with pytest.raises(ClightConfigError, match=r"cannot tell its kind"):
        tiny_stream("instruction", probes=[{"name": "odd", "file": str(odd)}]).prepare_stream()
    with pytest.raises(ClightConfigError, match="evaluates no probes"):
        tiny_stream("causal_lm", probes=[{"name": "prose-ppl", "file": str(LLM / "probes.jsonl")}]).prepare_stream()


class _Trainer:
    """What SelectiveSelfRehearsal reads from a trainer in its task hooks."""

    def __init__(self, data) -> None:
        from lightning.pytorch.plugins.precision import Precision

        self.datamodule, self.precision_plugin = data, Precision()


def test_self_rehearsal_keeps_the_models_own_answer_where_the_judge_accepts_it(monkeypatch, tmp_path: Path) -> None:
    module, data = _prepared(max_new_tokens=40)
    examples = [dict(ex) for ex in data.train_examples[0][:4]]
    data.train_examples[0] = examples
    own = [examples[0]["reference"], "nothing like it", examples[2]["reference"] + " indeed", "no"]
    own_ids = [data.tokenizer(a, add_special_tokens=False)["input_ids"] for a in own]
    calls = []

    def generate_tokens(input_ids, attention_mask, *, max_new_tokens, eos_token_id, pad_token_id, do_sample=False):
        calls.append(len(input_ids))
        rows = [(ids + [data._eos()] + [pad_token_id] * max_new_tokens)[:max_new_tokens] for ids in own_ids]
        return torch.tensor(rows[: len(input_ids)])

    monkeypatch.setattr(module, "generate_tokens", generate_tokens)
    ssr = SelectiveSelfRehearsal(judge="rouge_l", threshold=0.6)
    ssr.on_task_start(_Trainer(data), module, TaskInfo(index=0, name="man-commands"))
    decision = ssr.decisions["0"]
    expected = [True, False, True, False]  # ROUGE-L 1.0, 0, 0.8, 0 against the references
    assert decision["accepted"].tolist() == expected
    for ex, new, keep, ids in zip(examples, data.train_examples[0], expected, own_ids):
        prompt = ex["prompt_ids"]
        if keep:
            assert new["labels"] == ([-100] * len(prompt) + ids + [data._eos()])[: data.max_length]
            assert new["input_ids"] == (prompt + ids + [data._eos()])[: data.max_length]
        else:
            assert new is ex  # the gold example, untouched
    state = ssr.state_dict()
    torch.save(state, tmp_path / "ssr.pt")
    loaded = torch.load(tmp_path / "ssr.pt", weights_only=True)
    resumed = SelectiveSelfRehearsal(judge="rouge_l", threshold=0.6)
    resumed.load_state_dict(loaded)
    data.train_examples[0] = examples
    before = len(calls)
    resumed.on_task_start(_Trainer(data), module, TaskInfo(index=0, name="man-commands"))
    assert len(calls) == before  # a resumed task reuses its decisions: no generation
    assert [e["labels"] for e in data.train_examples[0]] == [e["labels"] for e in ssr._rewrite(data, examples, decision)]


def test_self_rehearsal_synthesizes_pseudo_examples_of_earlier_tasks(tmp_path: Path) -> None:
    ssr = SelectiveSelfRehearsal(synthetic_per_task=3, seed=1)
    run_stream(tmp_path, [ssr], kind="instruction", max_steps=2)
    assert ssr.prefixes == {"0": "What does the command `", "1": "What kind of thing is \""}
    pseudo = ssr.synthetic["1"]  # written at the start of task 1, for task 0
    assert pseudo["input_ids"].shape[0] == 3 and (pseudo["lengths"] > 0).all()
    assert "0" not in ssr.synthetic  # nothing to rehearse before the first task
