"""The quadratic-penalty family (EWC, online EWC, MAS, SI, L2Anchor) against hand-computed values on a 2-parameter
model, and EWC's gradient under gradient accumulation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from clight_testing import TINY_BERT, tiny_stream
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import Precision
from torch import nn

from clight import ContinualModule, TaskInfo
from clight.callbacks import EWC, MAS, SI, L2Anchor
from clight.functional.penalties import add_quadratic_penalty_grad_, normalize_importance_, quadratic_penalty
from clight.heads import ClassificationHead


class TwoParam(pl.LightningModule):
    """logits = (a·x, b): two scalar parameters whose gradients are easy to write down."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        return {"logits": torch.stack([self.a * x, self.b.expand_as(x)], -1)}  # (B, 2)

    def task_loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"], batch["labels"])

    def per_example_loss(self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"], batch["labels"], reduction="none")


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor([e["x"] for e in examples]), "labels": torch.tensor([e["y"] for e in examples])}


EXAMPLES = [{"x": 1.0, "y": 0}, {"x": 2.0, "y": 1}]
TASK = TaskInfo(index=0, name="t0")


def fake_trainer(examples: list[dict[str, Any]] = EXAMPLES, global_step: int = 1) -> SimpleNamespace:
    dm = SimpleNamespace(train_examples=[examples], collate=collate, seed=0, joint=False)
    return SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, precision_plugin=Precision(),
                           global_step=global_step, log_every_n_steps=1000)


def set_params(module: TwoParam, a: float, b: float) -> None:
    with torch.no_grad():
        module.a.fill_(a)
        module.b.fill_(b)
    module.a.grad, module.b.grad = torch.zeros(()), torch.zeros(())


def penalty_grads(callback: Any, module: TwoParam, trainer: SimpleNamespace) -> list[float]:
    callback.on_before_optimizer_step(trainer, module, None)
    return [module.a.grad.item(), module.b.grad.item()]


# ---- the pure functions -------------------------------------------------------------------------------------
def test_quadratic_penalty_and_its_gradient_by_hand() -> None:
    params = [torch.tensor([1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)]
    anchors, omega = [torch.tensor([0.5]), torch.tensor([0.0])], [torch.tensor([2.0]), torch.tensor([0.25])]
    # λ/2 Σ Ω (θ − θ*)² = 4/2 · (2 · 0.25 + 0.25 · 4) = 3
    value = quadratic_penalty(params, anchors, omega, 4.0)
    assert value.item() == pytest.approx(3.0)
    value.backward()
    assert [p.grad.item() for p in params] == pytest.approx([4.0, -2.0])  # λ Ω (θ − θ*)
    grads = [torch.tensor([0.1]), torch.tensor([0.2])]
    returned = add_quadratic_penalty_grad_(grads, [p.detach() for p in params], anchors, omega, 4.0,
                                           return_value=True)
    assert [g.item() for g in grads] == pytest.approx([4.1, -1.8]) and returned.item() == pytest.approx(3.0)
    assert quadratic_penalty(params, anchors, None, 4.0).item() == pytest.approx(2 * (0.25 + 4.0))  # Ω = 1


def test_penalty_gradient_keeps_16_bit_grads_and_uses_fp32_state() -> None:
    params, grads = [torch.tensor([1.0], dtype=torch.bfloat16)], [torch.tensor([0.5], dtype=torch.bfloat16)]
    add_quadratic_penalty_grad_(grads, params, [torch.tensor([0.75])], [torch.tensor([2.0])], 1.0)
    assert grads[0].dtype == torch.bfloat16 and grads[0].item() == 1.0  # 0.5 + 2 · 0.25


def test_penalty_gradient_in_groups_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import clight.functional.penalties as penalties

    torch.manual_seed(0)
    shapes = [(3, 4), (7,), (2, 2, 2), (1,), (5, 3)]
    params = [torch.randn(s) for s in shapes]
    anchors, omega = [torch.randn(s) for s in shapes], [torch.rand(s) for s in shapes]
    one = [torch.randn(s) for s in shapes]
    grouped = [g.clone() for g in one]
    value_one = add_quadratic_penalty_grad_(one, params, anchors, omega, 0.3, return_value=True)
    monkeypatch.setattr(penalties, "_GROUP_ELEMENTS", 10)  # groups [12], [7, 8 > 10 -> split], ...
    assert [(s.start, s.stop) for s in penalties._groups(params, 10)] == [(0, 1), (1, 2), (2, 4), (4, 5)]
    value_grouped = add_quadratic_penalty_grad_(grouped, params, anchors, omega, 0.3, return_value=True)
    torch.testing.assert_close(grouped, one)
    torch.testing.assert_close(value_grouped, value_one)


def test_normalize_importance_divides_by_the_mean() -> None:
    omega = [torch.tensor([1.0, 3.0]), torch.tensor([8.0])]
    assert normalize_importance_(omega) == pytest.approx(4.0)
    assert omega[0].tolist() == [0.25, 0.75] and omega[1].tolist() == [2.0]


# ---- EWC ---------------------------------------------------------------------------------------------------
def test_ewc_empirical_fisher_and_penalty_by_hand() -> None:
    # at a = b = 0: p = (0.5, 0.5); ∂CE/∂a = (p0 − [y=0]) x, ∂CE/∂b = p1 − [y=1]
    # example (x=1, y=0): (−0.5, 0.5); example (x=2, y=1): (1.0, −0.5)  →  F = ((0.25 + 1)/2, (0.25 + 0.25)/2)
    module, trainer = TwoParam(0.0, 0.0), fake_trainer()
    ewc = EWC(strength=4.0, num_examples=10, normalize=False)
    ewc.on_task_start(trainer, module, TASK)
    ewc.on_task_end(trainer, module, TASK)
    assert ewc.importance["a"].item() == pytest.approx(0.625) and ewc.importance["b"].item() == pytest.approx(0.25)
    assert ewc.anchor["a"].item() == 0.0 and ewc.anchor["b"].item() == 0.0
    set_params(module, 1.0, -2.0)
    assert penalty_grads(ewc, module, trainer) == pytest.approx([4 * 0.625 * 1.0, 4 * 0.25 * -2.0])


def test_ewc_micro_batched_estimate_and_normalisation() -> None:
    # one micro-batch of both examples: g = mean = (0.25, 0); m · g² = 2 · (0.0625, 0) over 2 examples
    module, trainer = TwoParam(0.0, 0.0), fake_trainer()
    ewc = EWC(num_examples=2, estimate_batch_size=2, normalize=False)
    ewc.on_task_start(trainer, module, TASK)
    ewc.on_task_end(trainer, module, TASK)
    assert ewc.importance["a"].item() == pytest.approx(0.0625) and ewc.importance["b"].item() == 0.0
    normalised = EWC(num_examples=10)
    normalised.on_task_start(trainer, module, TASK)
    normalised.on_task_end(trainer, module, TASK)
    assert normalised.importance_means == pytest.approx([0.4375])  # (0.625 + 0.25) / 2
    assert normalised.importance["a"].item() == pytest.approx(0.625 / 0.4375)


def test_true_fisher_labels_are_drawn_by_inverse_cdf() -> None:
    module = TwoParam(0.0, 0.0)  # p = (0.5, 0.5) for every x
    batch = collate(EXAMPLES)
    drawn = ClassificationHead().sample_labels(batch, module(batch), torch.tensor([[0.3], [0.7]]))
    assert drawn["labels"].tolist() == [0, 1]


def test_separate_ewc_keeps_every_task_penalty_in_two_tensors() -> None:
    module, trainer = TwoParam(1.0, 1.0), fake_trainer()
    ewc = EWC(strength=1.0)
    ewc.on_task_start(trainer, module, TASK)
    ewc.importance = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}  # task 1: F1 = (1, 2) at θ1 = (0, 0)
    ewc.anchor = {"a": torch.tensor(0.0), "b": torch.tensor(0.0)}
    ewc.consolidate({"a": torch.tensor(3.0), "b": torch.tensor(2.0)})  # task 2: F2 = (3, 2) at θ2 = (1, 1)
    assert ewc.importance["a"].item() == 4.0 and ewc.anchor["a"].item() == 0.75
    assert ewc.importance["b"].item() == 4.0 and ewc.anchor["b"].item() == 0.5
    set_params(module, 2.0, 3.0)  # Σ_t F_t (θ − θ_t) = (1·2 + 3·1, 2·3 + 2·2) = (5, 10)
    assert penalty_grads(ewc, module, trainer) == pytest.approx([5.0, 10.0])


def test_online_ewc_decays_the_old_fisher_and_anchors_at_the_latest_weights() -> None:
    module, trainer = TwoParam(1.0, 1.0), fake_trainer()
    ewc = EWC(strength=2.0, online=True, gamma=0.5)
    ewc.on_task_start(trainer, module, TASK)
    ewc.importance = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    ewc.anchor = {"a": torch.tensor(0.0), "b": torch.tensor(0.0)}
    ewc.consolidate({"a": torch.tensor(3.0), "b": torch.tensor(2.0)}, decay=ewc.decay)
    assert ewc.importance["a"].item() == 3.5 and ewc.importance["b"].item() == 3.0
    assert ewc.anchor["a"].item() == 1.0 and ewc.anchor["b"].item() == 1.0
    set_params(module, 2.0, 3.0)  # λ Ω (θ − θ*) = 2 · (3.5 · 1, 3 · 2)
    assert penalty_grads(ewc, module, trainer) == pytest.approx([7.0, 12.0])


# ---- MAS ---------------------------------------------------------------------------------------------------
def test_mas_importance_and_penalty_by_hand() -> None:
    # ‖f‖² = (a x)² + b²: ∂/∂a = 2 a x², ∂/∂b = 2 b; at a = 1, b = 0.5: x=1 → (2, 1), x=2 → (8, 1)
    module, trainer = TwoParam(1.0, 0.5), fake_trainer()
    mas = MAS(strength=0.5, num_examples=10, normalize=False)
    mas.on_task_start(trainer, module, TASK)
    mas.on_task_end(trainer, module, TASK)
    assert mas.importance["a"].item() == pytest.approx(5.0) and mas.importance["b"].item() == pytest.approx(1.0)
    set_params(module, 2.0, 0.0)  # λ Ω (θ − θ*) = 0.5 · (5 · 1, 1 · −0.5)
    assert penalty_grads(mas, module, trainer) == pytest.approx([2.5, -0.25])


# ---- SI ----------------------------------------------------------------------------------------------------
def test_si_path_integral_importance_and_penalty_by_hand() -> None:
    module, trainer = TwoParam(0.0, 0.0), fake_trainer()
    si = SI(strength=2.0, damping=0.01, normalize=False)
    si.on_task_start(trainer, module, TASK)
    assert si.anchor["a"].item() == 0.0  # the start weights
    # step 1: g = (1, −2), Δθ = (−0.1, 0.1): −g·Δθ = (0.1, 0.2); step 2: g = (0.5, 1), Δθ = (−0.1, 0.1): (0.05, −0.1)
    for (ga, gb), (a, b) in [((1.0, -2.0), (-0.1, 0.1)), ((0.5, 1.0), (-0.2, 0.2))]:
        module.a.grad, module.b.grad = torch.tensor(ga), torch.tensor(gb)
        si.on_before_optimizer_step(trainer, module, None)  # no importance yet: no penalty, grads untouched
        assert module.a.grad.item() == ga
        with torch.no_grad():
            module.a.fill_(a)
            module.b.fill_(b)
        si.on_train_batch_end(trainer, module)
        si.on_train_batch_end(trainer, module)  # a second micro-batch end without a step adds nothing
    assert si.omega["a"].item() == pytest.approx(0.15) and si.omega["b"].item() == pytest.approx(0.1)
    si.on_task_end(trainer, module, TASK)  # Ω = ω / (Δ² + ξ) = (0.15, 0.1) / (0.04 + 0.01)
    assert si.importance["a"].item() == pytest.approx(3.0) and si.importance["b"].item() == pytest.approx(2.0)
    assert si.omega["a"].item() == 0.0 and si.anchor["a"].item() == pytest.approx(-0.2)
    set_params(module, 0.0, 0.0)  # λ Ω (θ − θ*) = 2 · (3 · 0.2, 2 · −0.2)
    assert penalty_grads(si, module, trainer) == pytest.approx([1.2, -0.8])


# ---- L2Anchor ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("anchor", ["task_start", "pretrained"])
def test_l2_anchor_by_hand(anchor: str) -> None:
    module, trainer = TwoParam(1.0, -1.0), fake_trainer()
    l2 = L2Anchor(strength=3.0, anchor=anchor)
    l2.on_task_start(trainer, module, TASK)
    set_params(module, 1.5, -2.0)  # L2-SP from the first task on: 3 · (0.5, −1); `task_start` only from the 2nd
    assert penalty_grads(l2, module, trainer) == pytest.approx([1.5, -3.0] if anchor == "pretrained" else [0, 0])
    l2.on_task_end(trainer, module, TASK)
    l2.on_task_start(trainer, module, TaskInfo(index=1, name="t1"))
    set_params(module, 2.0, -2.0)
    expected = [1.5, 0.0] if anchor == "task_start" else [3.0, -3.0]  # anchor (1.5, −2) vs (1, −1)
    assert penalty_grads(l2, module, trainer) == pytest.approx(expected)


def test_l2_anchor_state_round_trip_keeps_the_anchor() -> None:
    module, trainer = TwoParam(1.0, -1.0), fake_trainer()
    l2 = L2Anchor(anchor="pretrained")
    l2.on_task_start(trainer, module, TASK)
    fresh = L2Anchor(anchor="pretrained")
    fresh.load_state_dict(l2.state_dict())
    set_params(module, 5.0, 5.0)
    fresh.on_task_start(trainer, module, TASK)  # a resume: the loaded anchor is kept, not retaken
    assert fresh.anchor["a"].item() == 1.0


# ---- gradient accumulation ------------------------------------------------------------------------------------
class GradCapture(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _first_step(batch_size: int, accumulate: int, strength: float | None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The gradients the optimizer sees at the first step, and ``λ Ω (θ0 − θ*)`` of the EWC state set up."""
    pl.seed_everything(0, verbose=False)
    config = dict(TINY_BERT, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same math per split
    module = ContinualModule(config=config)
    data = tiny_stream(num_tasks=1, batch_size=batch_size)
    data.prepare_stream()
    module.configure_stream(num_classes=data.num_classes, task_classes=data.task_classes)
    callbacks: list[Callback] = []
    expected: dict[str, torch.Tensor] = {}
    if strength is not None:
        ewc = EWC(strength=strength, num_examples=1)
        g = torch.Generator().manual_seed(1)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        ewc.importance = {n: torch.rand(p.shape, generator=g) for n, p in named}
        ewc.anchor = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in named}
        expected = {n: strength * ewc.importance[n] * (p.detach() - ewc.anchor[n]) for n, p in named}
        callbacks.append(ewc)
    capture = GradCapture()
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[*callbacks, capture])
    trainer.fit(module, datamodule=data)
    return capture.grads, expected


def test_ewc_gradient_under_accumulation_equals_the_unaccumulated_one() -> None:
    full, penalty = _first_step(8, 1, 50.0)
    accumulated, _ = _first_step(4, 2, 50.0)  # the same 8 examples in two micro-batches of 4
    plain, _ = _first_step(8, 1, None)
    assert set(full) == set(accumulated) == set(penalty)
    for name in full:
        assert torch.allclose(full[name], accumulated[name], atol=1e-6), name
        # the penalty is in there exactly once: optimizer gradient − task gradient = λ Ω (θ0 − θ*)
        assert torch.allclose(full[name] - plain[name], penalty[name], atol=1e-5), name
    assert max(p.abs().max().item() for p in penalty.values()) > 1e-3


def test_the_logged_penalty_is_its_value_at_the_step_lightning_writes(tmp_path) -> None:
    """The penalty is computed only on the steps Lightning writes (it costs a reduction); the value written at a
    step must be that step's, not one left over from an earlier step."""
    from lightning.pytorch.loggers.logger import Logger
    from reuse_modules import loader, make_module

    written: list[tuple[int, dict[str, float]]] = []

    class Record(Logger):
        name, version = "record", "0"

        def log_metrics(self, metrics, step=None):
            written.append((step, {k: float(v) for k, v in metrics.items()}))

        def log_hyperparams(self, *args, **kwargs):
            pass

    anchor, expected = L2Anchor(strength=1.0, anchor="pretrained"), {}  # penalised from the first step

    class Expected(Callback):  # listed before the anchor: sees the weights its penalty sees
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if anchor.anchor:
                params = dict(pl_module.named_parameters())
                names = list(anchor.anchor)
                expected[trainer.global_step] = float(quadratic_penalty(
                    [params[n].detach() for n in names], [anchor.anchor[n] for n in names], None, 1.0))

    module = make_module("mlp")
    pl.Trainer(max_epochs=3, log_every_n_steps=2, logger=Record(), callbacks=[Expected(), anchor],
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path).fit(module, loader("mlp", 0))
    logged = {step: m["train/penalty_l2"] for step, m in written if "train/penalty_l2" in m}
    assert len(logged) >= 3 and len(set(logged.values())) == len(logged)  # the weights move: every value differs
    for step, value in logged.items():
        assert value == pytest.approx(expected[step], rel=1e-5), (step, logged, expected)
