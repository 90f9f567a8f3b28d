"""Distillation (LwF) and FeatureDistillation: the losses by hand, the teacher forward against a real copy of the
trained model, and a LoRA teacher that holds only the trainable tensors."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from clight_testing import tiny_module

from clight import TaskInfo
from clight.callbacks import Distillation, FeatureDistillation
from clight.errors import ClightConfigError
from clight.functional.penalties import distillation_kl, feature_distance

BATCH = {"input_ids": torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "labels": torch.tensor([0, 2])}


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kl_by_hand_with_temperature() -> None:
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    assert distillation_kl(student, teacher, 1.0).item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]))
    # T = 2: teacher (ln 3 / 2, 0) → p = (√3, 1) / (√3 + 1); the term is scaled by T² = 4
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    assert distillation_kl(student, teacher, 2.0).item() == pytest.approx(4 * _kl(p, [0.5, 0.5]))


def test_kl_top_k_renormalises_on_the_teachers_tokens_and_masks_positions() -> None:
    teacher = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # (B=1, T=2, V=3)
    student = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, False]])  # the second position is padding
    expected = _kl(_softmax([2.0, 1.0]), _softmax([0.0, 1.0]))  # teacher's top-2 = tokens 0 and 1
    assert distillation_kl(student, teacher, 1.0, top_k=2, mask=mask).item() == pytest.approx(expected)
    full = _kl(_softmax([2.0, 1.0, 0.0]), _softmax([0.0, 1.0, 2.0]))
    assert distillation_kl(student, teacher, 1.0, mask=mask).item() == pytest.approx(full)


def test_feature_distance_by_hand() -> None:
    s = torch.tensor([[[1.0, 0.0], [3.0, 3.0]]])  # (B=1, T=2, H=2)
    t = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    assert feature_distance(s, t, "mse", mask).item() == pytest.approx(1.0)  # ((1)² + (−1)²) / 2
    assert feature_distance(s, t, "cosine", mask).item() == pytest.approx(1.0)  # orthogonal: 1 − 0
    assert feature_distance(s, s * 2, "cosine").item() == pytest.approx(0.0, abs=1e-6)


def _trained_module(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    module = tiny_module(num_classes=4, **kwargs)
    module.configure_stream(num_classes=4, task_classes=[[0, 1], [2, 3]])
    return module


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(datamodule=SimpleNamespace(joint=False))


def test_distillation_term_equals_kl_against_a_real_copy_of_the_old_model() -> None:
    module = _trained_module()
    lwf = Distillation(alpha=1.0, temperature=2.0)
    assert lwf.distillation_loss(module, BATCH, module(BATCH)).item() == 0.0  # no teacher during the first task
    lwf.on_task_end(_fake_trainer(), module, TaskInfo(index=0, name="t0"))
    assert lwf.old_classes == [0, 1]
    old = copy.deepcopy(module).eval()
    _perturb(module)
    module.train()
    outputs = module(BATCH)
    term = lwf.distillation_loss(module, BATCH, outputs)
    assert module.training and module.backbone.training  # the teacher's eval mode was undone
    with torch.no_grad():
        teacher = old(BATCH)["logits"][:, :2]
    expected = distillation_kl(outputs["logits"][:, :2], teacher, 2.0)
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0
    term.backward()  # the student receives the gradient, the snapshot does not
    assert module.head.linear.weight.grad is not None
    assert all(not t.requires_grad for t in lwf.teacher.values())


def test_lora_teacher_holds_only_the_trainable_tensors() -> None:
    module = _trained_module(peft={"r": 4, "target_modules": ["query", "value"]})
    lwf = Distillation()
    lwf.on_task_end(_fake_trainer(), module, TaskInfo(index=0, name="t0"))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(lwf.teacher) == trainable
    assert all("lora_" in n or n.startswith("head.linear.") for n in lwf.teacher)
    teacher_numel = sum(t.numel() for t in lwf.teacher.values())
    assert teacher_numel < 0.05 * sum(p.numel() for p in module.parameters())
    old = copy.deepcopy(module).eval()
    _perturb(module)
    with torch.no_grad():
        assert torch.allclose(lwf.teacher_forward(module, BATCH)["logits"], old(BATCH)["logits"], atol=1e-6)


def test_feature_distillation_matches_hidden_states_of_a_real_copy() -> None:
    module = _trained_module()
    fd = FeatureDistillation(layers=[0, -1], weights=[0.25, 1.0], loss="mse")
    trainer = SimpleNamespace(strategy=SimpleNamespace(), datamodule=SimpleNamespace(joint=False))
    blocks = module.backbone.encoder.layer
    fd.setup(trainer, module, "fit")  # hooks blocks 0 and -1 (= 1)
    assert fd.loss_term_names == ("feature_distill",) and len(fd._hooks) == 2
    assert all(any(h.id in block._forward_hooks for block in blocks) for h in fd._hooks)
    fd.on_task_end(trainer, module, TaskInfo(index=0, name="t0"))
    old = copy.deepcopy(module).eval()
    _perturb(module)
    module.eval()  # no dropout, so the student's states can be recomputed below
    fd.on_train_batch_start(trainer, module, BATCH, 0)
    outputs = module(BATCH)
    term = fd.distillation_loss(module, BATCH, outputs)  # leaves the capture cleared (checked below)
    with torch.no_grad():
        hs = module.backbone(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"],
                             output_hidden_states=True).hidden_states  # (embeddings, block 0, block 1)
        ht = old.backbone(input_ids=BATCH["input_ids"], attention_mask=BATCH["attention_mask"],
                          output_hidden_states=True).hidden_states
    mask = BATCH["attention_mask"]
    expected = 0.25 * feature_distance(hs[1], ht[1], "mse", mask) + feature_distance(hs[2], ht[2], "mse", mask)
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0
    assert fd._capture is None
    ours = [h.id for h in fd._hooks]
    fd.teardown(trainer, module, "fit")
    assert fd._hooks == [] and not any(i in block._forward_hooks for block in blocks for i in ours)


def test_feature_distillation_rejects_layers_out_of_range() -> None:
    module = _trained_module()  # 2 blocks
    with pytest.raises(ClightConfigError, match="layers"):
        FeatureDistillation(layers=[2]).setup(SimpleNamespace(strategy=SimpleNamespace()), module, "fit")
