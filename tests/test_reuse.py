"""Every technique of `clight.callbacks` in a foreign Lightning project: a plain torch MLP on tensors (and images)
and a tiny Hugging Face model with its own batch format, each over three tasks, a plain `DataLoader` and a fresh
`Trainer` per task, the same callback instance throughout (tests/reuse_modules.py). Each test checks what the
technique does, not only that it runs. SelectiveSelfRehearsal needs an instruction stream and is left out.
What a half-built adapter gets instead (one line, in `setup`): tests/test_reuse_contracts.py."""

from __future__ import annotations

import pytest
import torch
from reuse_modules import CLASSES, TASKS, make_module, run_tasks, task_rows, undeclared

import clight.callbacks as cb
from clight.callbacks.lora.lora_per_task import task_adapter

KINDS = ["mlp", "bert"]
COVERED = {"SelectiveSelfRehearsal"}  # grows as the tests below are collected; checked at the end of the file


def covers(*names: str):
    COVERED.update(names)
    return lambda fn: fn


def later_terms_positive(values: list[list[float]]) -> None:
    """A loss term of a technique that needs a finished task: zero in task 0, non-zero in every later task."""
    assert values[0] and all(v == 0.0 for v in values[0]), values[0]
    for later in values[1:]:
        assert later and max(later) > 1e-6, later


def rows_of(kind: str, task: int, key: str) -> torch.Tensor:
    return torch.stack([r[key] for r in task_rows(kind, task)])


# ---- rehearsal: memories of whole batch rows, any modality -------------------------------------------------------
@covers("Replay")
@pytest.mark.parametrize("kind", ["mlp", "image", "bert"])
def test_replay_keeps_rows_of_earlier_tasks_and_replays_them(kind, tmp_path) -> None:
    replay = cb.Replay(memory_size=12, replay_batch_size=4, policy="task_balanced")
    run = run_tasks(kind, [replay], tmp_path)
    later_terms_positive(run.terms("train/loss_replay"))
    memory = replay.memory
    assert memory.size == 12 and memory.fields["task"].tolist().count(0) == 4  # 4 rows of each task
    key = "ids" if kind == "bert" else "x"
    for task in range(TASKS):  # every stored row is a row of its task's training data, stored as it was
        stored = replay.memory_rows((memory.fields["task"] == task).nonzero().squeeze(1))
        data = rows_of(kind, task, key)
        assert stored[key].dtype == data.dtype and stored[key].shape[1:] == data.shape[1:]
        assert all(any(torch.equal(row, d) for d in data) for row in stored[key])
    batch = replay.memory_rows(torch.arange(4))  # replayed as the batch dict the module takes
    assert set(batch) == set(task_rows(kind, 0)[0]) and run.module(batch)["logits"].shape == (4, 6)


@covers("DarkExperienceReplay")
@pytest.mark.parametrize("kind", KINDS)
def test_der_stores_the_task_models_logits_with_the_rows(kind, tmp_path) -> None:
    der = cb.DarkExperienceReplay(memory_size=9, replay_batch_size=3, alpha=0.5, beta=0.5)
    run = run_tasks(kind, [der], tmp_path)
    later_terms_positive(run.terms("train/loss_der"))
    last = (der.memory.fields["task"] == TASKS - 1).nonzero().squeeze(1)
    assert len(last) > 0 and der.memory.fields["logits"].shape == (9, 6)
    with torch.no_grad():  # the last task's rows carry the logits of the model that finished it (the final one)
        logits = run.module.eval()(der.memory_rows(last))["logits"]
    assert torch.allclose(logits, der.memory.fields["logits"][last], atol=1e-5)


@covers("AGEM")
@pytest.mark.parametrize("kind", KINDS)
def test_agem_projects_with_a_memory_of_earlier_tasks(kind, tmp_path) -> None:
    agem = cb.AGEM(memory_size=8, replay_batch_size=4, policy="task_balanced")
    run = run_tasks(kind, [agem], tmp_path)
    assert agem.steps == 2 * 3  # every optimizer step of tasks 1 and 2 had a reference gradient
    assert run.terms("train/agem_projected")[0] == [] and len(run.terms("train/agem_projected")[2]) == 3
    assert sorted(set(agem.memory.fields["task"].tolist())) == [0, 1, 2]


# ---- regularization: penalties toward earlier weights, importance from the task's batches ----------------------
@covers("EWC", "MAS", "SI", "L2Anchor")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make, term", [
    (lambda: cb.EWC(strength=1.0, num_examples=12), "ewc"), (lambda: cb.MAS(strength=1.0, num_examples=12), "mas"),
    (lambda: cb.SI(strength=1.0), "si"), (lambda: cb.L2Anchor(strength=1.0), "l2")], ids=["ewc", "mas", "si", "l2"])
def test_penalties_pull_toward_the_previous_task(kind, make, term, tmp_path) -> None:
    penalty = make()
    run = run_tasks(kind, [penalty], tmp_path)
    values = run.terms(f"train/penalty_{term}")
    assert values[0] == []  # no anchor before the first task ends
    assert values[1][0] == pytest.approx(0.0, abs=1e-9)  # task 1 starts at its anchor, the first task's weights
    assert all(later[-1] > 1e-8 for later in values[1:])  # ... and the weights move away from it
    trainable = {n for n, p in run.module.named_parameters() if p.requires_grad}
    assert set(penalty.anchor) == trainable
    if penalty.anchor_update == "latest":  # (separate EWC anchors at the Fisher-weighted mean of the tasks')
        assert all(torch.equal(penalty.anchor[n].cpu(), run.end[-1][n]) for n in trainable)
    if term in ("ewc", "mas"):  # estimated on 12 rows of every task's training batches
        assert len(penalty.importance_means) == TASKS and set(penalty.importance) == trainable
        assert all(bool((v >= 0).all()) for v in penalty.importance.values())


# ---- distillation ------------------------------------------------------------------------------------------------
@covers("Distillation", "FeatureDistillation")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make, term", [(lambda: cb.Distillation(alpha=1.0), "distill"),
                                        (lambda: cb.FeatureDistillation(layers=[0, -1]), "feature_distill")],
                         ids=["lwf", "features"])
def test_distillation_matches_the_previous_tasks_model(kind, make, term, tmp_path) -> None:
    distill = make()
    run = run_tasks(kind, [distill], tmp_path)
    later_terms_positive([t[1:] for t in run.terms(f"train/loss_{term}")])  # step 0 of a task: student = teacher
    assert distill.teacher_tasks == TASKS
    assert all(torch.equal(distill.teacher[n].cpu(), run.end[-1][n]) for n in distill.teacher)
    if term == "distill":
        assert distill.old_classes == [c for cs in CLASSES for c in cs]


# ---- masking: frozen and masked weights stay put, the declared head trains ----------------------------------------
def _moved(run, task: int, name: str) -> bool:
    return not torch.equal(run.start[task][name], run.end[task][name])


@covers("FreezeParameters")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("declared", [True, False], ids=["output_head", "head_argument"])
def test_bitfit_trains_biases_and_the_declared_head(kind, declared, tmp_path) -> None:
    module = make_module(kind)
    if not declared:  # a module that declares no `output_head()` names its head in the callback instead
        module = undeclared(module, "output_head")
    freeze = cb.FreezeParameters(preset="bitfit", head=None if declared else "classifier")
    run = run_tasks(kind, [freeze], tmp_path, module=module)
    for task in range(TASKS):
        body = [n for n in run.start[task] if not n.startswith("classifier.") and not n.endswith("bias")]
        assert body and not any(_moved(run, task, n) for n in body)  # bit-identical under AdamW's decay too
        assert _moved(run, task, "classifier.weight") and any(_moved(run, task, n) for n in run.start[task]
                                                              if n.endswith("bias") and "classifier" not in n)


@covers("GradientMask")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("declared", [True, False], ids=["output_head", "head_argument"])
def test_gradient_mask_keeps_masked_entries_and_leaves_the_head_out(kind, declared, tmp_path) -> None:
    module = make_module(kind) if declared else undeclared(make_module(kind), "output_head")
    mask = cb.GradientMask(mode="importance", fraction=0.5, head=None if declared else "classifier")
    run = run_tasks(kind, [mask], tmp_path, module=module, record=lambda: dict(mask.masks))
    assert run.records[0] == {} and mask.masks and not any(n.startswith("classifier.") for n in mask.masks)
    for task in (1, 2):  # the earlier tasks' masks: bit-identical under AdamW; the other entries and the head move
        for name, m in run.records[task].items():
            start, end = run.start[task][name], run.end[task][name]
            assert torch.equal(start[m], end[m]) and not torch.equal(start[~m], end[~m]), name
        assert _moved(run, task, "classifier.weight")


@covers("HalfFineTuning")
def test_half_finetuning_freezes_a_drawn_half_of_each_layer(tmp_path) -> None:
    hft = cb.HalfFineTuning(seed=0)
    run = run_tasks("bert", [hft], tmp_path)
    assert sorted(hft.choices) == [0, 1, 2] and hft.choices[0] != hft.choices[1]
    for task in range(TASKS):
        frozen = hft.frozen_names(run.module, hft.choices[task])
        assert any("embeddings" in n for n in frozen) and not any(n.startswith("classifier.") for n in frozen)
        assert not any(_moved(run, task, n) for n in frozen)
        assert sum(_moved(run, task, n) for n in run.start[task] if ".layer." in n and n not in frozen) > 4
        assert _moved(run, task, "classifier.weight")


# ---- LoRA: any module holding a peft model, through AdapterMixin ---------------------------------------------------
def _adapter(run, task: int, name: str) -> dict[str, torch.Tensor]:
    return {n: w for n, w in run.end[task].items() if f".{name}." in n}


@covers("LoRAPerTask")
@pytest.mark.parametrize("kind", KINDS)
def test_lora_per_task_trains_one_adapter_per_task_and_keeps_earlier_ones(kind, tmp_path) -> None:
    lora = cb.LoRAPerTask(seed=0)
    run = run_tasks(kind, [lora], tmp_path, lora=True)
    assert run.module.adapter_names == [task_adapter(t) for t in range(TASKS)]  # peft's `default` removed
    first = _adapter(run, 0, task_adapter(0))
    assert first and all(torch.equal(w, run.end[-1][n]) for n, w in first.items())  # untouched by later tasks
    rows = torch.tensor(CLASSES[0])
    for task in (1, 2):
        weight = (run.start[task]["classifier.weight"], run.end[task]["classifier.weight"])
        assert torch.equal(weight[0][rows], weight[1][rows])  # task 0's head rows stay
        assert not torch.equal(weight[0][torch.tensor(CLASSES[task])], weight[1][torch.tensor(CLASSES[task])])
        assert any(not torch.equal(run.start[task][n], w) for n, w in _adapter(run, task, task_adapter(task)).items())


@covers("ChainOfLoRA")
@pytest.mark.parametrize("kind", KINDS)
def test_chain_of_lora_merges_the_adapter_into_the_base_at_every_task_end(kind, tmp_path) -> None:
    chain = cb.ChainOfLoRA(seed=0)
    run = run_tasks(kind, [chain], tmp_path, lora=True)
    assert chain.merges == TASKS and run.module.active_adapters == ["default"]
    bases = [n for n in run.start[0] if n.endswith("base_layer.weight")]
    assert bases and sorted(run.module._modified) == sorted(bases)  # merged base weights are marked as changed
    for task in range(TASKS):
        assert all(_moved(run, task, n) for n in bases)  # frozen during training; changed by the task-end merge
        assert all(not w.any() for n, w in run.end[task].items() if ".lora_B." in n)  # a fresh adapter: B = 0


@covers("OrthogonalLoRA")
@pytest.mark.parametrize("kind", KINDS)
def test_orthogonal_lora_penalises_overlap_with_earlier_adapters(kind, tmp_path) -> None:
    olora = cb.OrthogonalLoRA(lambda_orth=0.5, seed=0)
    run = run_tasks(kind, [olora], tmp_path, lora=True)
    later_terms_positive(run.terms("train/loss_orth"))
    assert run.module.active_adapters == [task_adapter(t) for t in range(TASKS)]
    first = _adapter(run, 0, task_adapter(0))
    assert all(torch.equal(w, run.end[-1][n]) for n, w in first.items())


@covers("AdaLoRABudget")
def test_adalora_budget_cuts_a_foreign_adalora_module_s_ranks_and_adds_its_penalty(tmp_path) -> None:
    from reuse_modules import AdaLoRAMLP

    run = run_tasks("mlp", [cb.AdaLoRABudget()], tmp_path, module=AdaLoRAMLP())
    assert all(values and min(values) > 0 for values in run.terms("train/loss_adalora_orth"))
    for task in range(TASKS):  # every task's schedule ends at the budget: target_r (2) per matrix on average
        ranks = [int((w != 0).sum()) for n, w in run.end[task].items() if "lora_E" in n]
        assert len(ranks) == 2 and sum(ranks) == 2 * 2, ranks
    assert run.module.peft_model.base_model.peft_config["default"].rank_pattern


# ---- weight space ------------------------------------------------------------------------------------------------
@covers("EMAWeights")
@pytest.mark.parametrize("kind", KINDS)
def test_ema_becomes_the_model_at_every_task_end(kind, tmp_path) -> None:
    ema = cb.EMAWeights(decay=0.5)
    run = run_tasks(kind, [ema], tmp_path)
    assert ema.num_updates == 3 * TASKS and set(ema.ema) == set(run.end[-1])
    assert all(torch.equal(run.end[-1][n], w) for n, w in ema.ema.items())  # the final model is the average
    for task in range(TASKS):  # ... which differs from the fast weights of the task's last step
        assert any(not torch.equal(run.end[task][n], run.trained[task][n]) for n in ema.ema)
        if task + 1 < TASKS:  # `continue_from: ema`: the next task trains from the average
            assert all(torch.equal(run.end[task][n], run.start[task + 1][n]) for n in ema.ema)


@covers("TaskVectorMerge")
@pytest.mark.parametrize("kind", KINDS)
def test_task_vector_merge_sets_the_merge_and_trains_on_from_the_finetuned_weights(kind, tmp_path) -> None:
    merge = cb.TaskVectorMerge(method="task_arithmetic", scale=0.5, continue_from="finetuned")
    run = run_tasks(kind, [merge], tmp_path)
    assert len(merge.vectors) == TASKS
    for task in range(TASKS):  # θ ← θ_pre + 0.5 Σ τ, τ_t = θ_t − θ_pre; task t+1 trains from θ_t
        merged = {n: merge.pretrained[n] + 0.5 * sum(run.trained[t][n] - merge.pretrained[n] for t in range(task + 1))
                  for n in merge.pretrained}
        assert all(torch.allclose(run.end[task][n], w, atol=1e-6) for n, w in merged.items())
        if task + 1 < TASKS:
            assert all(torch.equal(run.start[task + 1][n], run.trained[task][n]) for n in merge.pretrained)


@covers("WeightInterpolation")
@pytest.mark.parametrize("kind", KINDS)
def test_wise_ft_interpolates_the_body_and_keeps_the_declared_head(kind, tmp_path) -> None:
    wise = cb.WeightInterpolation(alpha=0.5, anchor="pretrained", interpolate_head=False)
    run = run_tasks(kind, [wise], tmp_path)
    assert wise.alphas == [0.5] * TASKS and not any(n.startswith("classifier.") for n in wise.pretrained)
    for task in range(TASKS):
        assert all(torch.allclose(run.end[task][n], (wise.pretrained[n] + run.trained[task][n]) / 2, atol=1e-6)
                   for n in wise.pretrained)
        assert torch.equal(run.end[task]["classifier.weight"], run.trained[task]["classifier.weight"])


def test_wise_ft_auto_chooses_alpha_on_rows_of_every_seen_tasks_batches(tmp_path) -> None:
    wise = cb.WeightInterpolation(alpha="auto", alpha_grid=[0.0, 0.5, 1.0], selection_examples=6)
    run_tasks("mlp", [wise], tmp_path)
    assert len(wise.alphas) == TASKS and set(wise.alphas) <= {0.0, 0.5, 1.0}
    assert [len(s["x"]) for s in wise.samples] == [6] * TASKS and wise.samples[0]["x"].shape == (6, 6)


def test_every_technique_is_covered() -> None:
    assert set(cb.__all__) <= COVERED, sorted(set(cb.__all__) - COVERED)
