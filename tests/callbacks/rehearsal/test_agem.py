"""AGEM: the projection rule by hand, the reference gradient leaves .grad alone, sharded strategies refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from clight_testing import fake_module, tiny_module
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import FSDPStrategy

from clight.callbacks import AGEM
from clight.callbacks.rehearsal.agem import agem_project_
from clight.errors import ClightConfigError


def test_projection_two_parameters_by_hand() -> None:
    grads = [torch.tensor([1.0]), torch.tensor([[-2.0]])]  # g = (1, -2)
    reference = torch.tensor([1.0, 1.0])  # r = (1, 1): g·r = -1, r·r = 2
    assert agem_project_(grads, reference)
    # g - (g·r / r·r) r = (1, -2) + 0.5 (1, 1) = (1.5, -1.5), orthogonal to r
    assert grads[0].tolist() == [1.5] and grads[1].tolist() == [[-1.5]]


@pytest.mark.parametrize("g", [[1.0, 2.0], [1.0, -1.0]])  # g·r = 3 > 0 and g·r = 0
def test_non_negative_dot_product_is_untouched(g: list[float]) -> None:
    grads = [torch.tensor([g[0]]), torch.tensor([g[1]])]
    before = [t.clone() for t in grads]
    assert not agem_project_(grads, torch.tensor([1.0, 1.0]))
    assert all(torch.equal(a, b) for a, b in zip(grads, before))


def test_reference_gradient_leaves_accumulated_grads_alone() -> None:
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    batch = {"input_ids": torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "labels": torch.tensor([0, 2])}
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 0.25)
    trainer = SimpleNamespace(world_size=1, precision_plugin=Precision())
    module.eval()  # no dropout: the two computations below must agree exactly
    with torch.no_grad():  # as inside optimizer.step
        reference = AGEM()._reference_gradient(trainer, module, params, batch)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in params)
    expected = torch.autograd.grad(module.task_loss(batch, module(batch)), params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(expected, params)])
    assert torch.allclose(reference, flat)


def test_sharded_strategies_are_refused() -> None:
    trainer = SimpleNamespace(strategy=FSDPStrategy(), datamodule=SimpleNamespace(train_examples=[], collate=list))
    module = fake_module()
    with pytest.raises(ClightConfigError, match="FSDPStrategy"):
        AGEM().setup(trainer, module, "fit")
