"""GradientMask: thresholds, top-k masks and bit-packing by hand; masked weights bit-identical under AdamW with
weight decay and momentum from earlier unmasked steps; importance and sparse folds by hand; a real run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clight_testing import run_stream
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from clight.callbacks import GradientMask
from clight.errors import ClightConfigError
from clight.functional.masking import magnitude_thresholds, pack_bits, topk_mask, topk_masks, unpack_bits
from clight.task import TaskInfo


# ---- pure helpers ----------------------------------------------------------------------------------------------
def test_magnitude_thresholds_by_hand() -> None:
    g = torch.tensor([0.1, -0.5, 0.0, 2.0, -0.05])
    (lam,) = magnitude_thresholds([g], 0.4, "tensor", 16384)  # k = 2: the 2nd smallest |g| is 0.05
    assert lam == pytest.approx(0.05)
    assert torch.hardshrink(g, lam).tolist() == pytest.approx([0.1, -0.5, 0.0, 2.0, 0.0])
    # global: |g| over both tensors is {1, 2, 3, 4, 0.5}; k = 2 -> 1.0 for both
    assert magnitude_thresholds([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-4.0, 0.5])], 0.4, "global",
                                16384) == [1.0, 1.0]
    # a strided sample: arange(100) with 10 samples is 0, 10, ..., 90; k = 3 -> 20
    assert magnitude_thresholds([torch.arange(100.0)], 0.3, "tensor", 10) == [20.0]
    assert magnitude_thresholds([torch.ones(2)], 0.2, "tensor", 16384) == [-1.0]  # rounds to no entry


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_magnitude_thresholds_of_row_shards_equal_those_of_the_full_tensors(scope: str) -> None:
    # three "ranks" each hold dim-0 chunks (FSDP2's layout) of tensors with odd shapes; the gathered samples must
    # give the thresholds of the full tensors (same strided sample, so the same order statistic)
    gen = torch.Generator().manual_seed(0)
    full = [torch.randn(7, 5, generator=gen), torch.randn(10, generator=gen), torch.randn(2, 3, generator=gen)]
    world, size = 3, 8  # a sample smaller than the tensors, so the strides and offsets matter
    chunks = [[t.chunk(world)[r] if r < len(t.chunk(world)) else t[:0] for t in full] for r in range(world)]
    shards = []
    for i in range(len(full)):
        offsets = [sum(chunks[q][i].numel() for q in range(r)) for r in range(world)]
        shards.append([(offsets[r], chunks[r][i].numel()) for r in range(world)])
    sent: dict[int, list[torch.Tensor]] = {}

    def record(rank: int):
        def gather(pieces: list[torch.Tensor], counts: list[list[int]]) -> list[torch.Tensor]:
            assert [p.numel() for p in pieces] == counts[rank]
            sent[rank] = pieces
            return pieces
        return gather

    for r in range(world):
        magnitude_thresholds(chunks[r], 0.3, scope, size, shards=shards, rank=r, gather=record(r))
    everyone = [torch.cat([sent[r][i] for r in range(world)]) for i in range(len(full))]
    expected = magnitude_thresholds(full, 0.3, scope, size)
    for r in range(world):
        got = magnitude_thresholds(chunks[r], 0.3, scope, size, shards=shards, rank=r,
                                   gather=lambda pieces, counts: everyone)
        assert got == expected


def test_topk_mask_exact_count_and_ties_by_index() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert topk_mask(scores, 2).tolist() == [False, True, True, False, False]
    assert topk_mask(scores, 4).tolist() == [False, True, True, True, True]
    assert not topk_mask(scores, 0).any() and topk_mask(scores, 5).all()
    masks = topk_masks([torch.tensor([5.0, 1.0]), torch.tensor([4.0, 2.0, 3.0])], 0.4, "global")
    assert [m.tolist() for m in masks] == [[True, False], [True, False, False]]
    masks = topk_masks([torch.tensor([5.0, 1.0]), torch.tensor([4.0, 2.0, 3.0])], 0.4, "tensor")  # 1 and 1 (round)
    assert [m.tolist() for m in masks] == [[True, False], [True, False, False]]


def test_pack_bits_by_hand_and_round_trip() -> None:
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.tolist() == [129, 128]
    assert torch.equal(unpack_bits(packed, [9]), mask)
    big = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.3
    assert pack_bits(big).numel() == 14 and torch.equal(unpack_bits(pack_bits(big), big.shape), big)


def test_constructor_and_sharded_checks() -> None:
    with pytest.raises(ClightConfigError, match="`reset`"):
        GradientMask(mode="importance", reset=True)
    with pytest.raises(ClightConfigError, match="FSDPStrategy"):
        GradientMask().setup(SimpleNamespace(strategy=FSDPStrategy()), SimpleNamespace(automatic_optimization=True),
                             "fit")


# ---- the step guard without Lightning -------------------------------------------------------------------------
class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.head = nn.Linear(5, 2)

    def output_head(self) -> nn.Module:
        return self.head


def _steps(cb: GradientMask | None, module: Toy, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        if cb is not None:
            cb.on_before_optimizer_step(None, module, opt)
        opt.step()


def _adamw_with_momentum(seed: int = 0) -> tuple[Toy, torch.optim.AdamW]:
    torch.manual_seed(seed)
    module = Toy()
    opt = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.1)
    _steps(None, module, opt, 3, seed=1)  # three unmasked steps: Adam's moments are non-zero everywhere
    return module, opt


@pytest.mark.parametrize("guarded", [True, False])
def test_fixed_mask_keeps_weights_bit_identical_under_adamw(guarded: bool) -> None:
    module, opt = _adamw_with_momentum()
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(2)) < 0.4
    cb = GradientMask(mode="sparse", fraction=0.4)
    cb.masks = {"lin.weight": mask}
    cb.on_train_start(SimpleNamespace(optimizers=[opt]), module)
    before = module.lin.weight.detach().clone()
    assert (opt.state[module.lin.weight]["exp_avg"][mask] != 0).all()
    _steps(cb if guarded else None, module, opt, 4, seed=3)
    after = module.lin.weight.detach()
    if guarded:
        assert torch.equal(after[mask], before[mask])  # bit-identical, decay and momentum notwithstanding
    else:  # the control: without the guard AdamW moves every masked entry
        assert (after[mask] != before[mask]).all()
    assert (after[~mask] != before[~mask]).all()
    cb.on_train_end(None, module)
    assert not opt._optimizer_step_post_hooks


def test_magnitude_mask_keeps_small_gradient_entries_bit_identical() -> None:
    module, opt = _adamw_with_momentum()
    cb = GradientMask(mode="magnitude", fraction=0.5)
    cb.on_train_start(SimpleNamespace(optimizers=[opt]), module)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        for p in module.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        raw = module.lin.weight.grad.clone()
        cb.on_before_optimizer_step(None, module, opt)
        masked = module.lin.weight.grad == 0
        # half of the 30 entries, the smallest |g|: exactly those whose |g| is at most the 15th smallest
        assert int(masked.sum()) == 15 and torch.equal(masked, raw.abs() <= raw.abs().flatten().kthvalue(15).values)
        assert (opt.state[module.lin.weight]["exp_avg"][masked] != 0).all()  # momentum would move them
        before = module.lin.weight.detach().clone()
        opt.step()
        after = module.lin.weight.detach()
        assert torch.equal(after[masked], before[masked]) and (after[~masked] != before[~masked]).all()
    assert module.head.weight.grad.ne(0).all()  # the head is out of scope by default


def test_importance_fisher_and_path_folds_by_hand() -> None:
    module = Toy()
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    cb = GradientMask(mode="importance", fraction=0.5)
    cb.on_task_start(None, module, TaskInfo(0, "a"))
    cb.on_train_start(SimpleNamespace(optimizers=[opt]), module)
    for row in ([1.0, 0.0, 2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 3.0, 0.0, 0.0]):
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
        module.lin.weight.grad[0] = torch.tensor(row)
        cb.on_before_optimizer_step(None, module, opt)
        opt.step()
    cb.on_train_end(None, module)
    cb.on_task_end(None, module, TaskInfo(0, "a"))
    # mean g^2 of row 0: [1, 0, 2, 4.5, 0, 0]; divided by the maximum 4.5
    expected = torch.zeros(5, 6)
    expected[0] = torch.tensor([1 / 4.5, 0.0, 2 / 4.5, 1.0, 0.0, 0.0])
    assert cb.running["lin.weight"].dtype == torch.bfloat16
    assert torch.equal(cb.running["lin.weight"], expected.to(torch.bfloat16))
    assert int(cb.masks["lin.weight"].sum()) == 15 and cb.masks["lin.weight"][0, [0, 2, 3]].all()
    assert "head.weight" not in cb.masks

    path = GradientMask(mode="importance", importance="path", fraction=0.5)
    module = Toy()
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    path.on_task_start(None, module, TaskInfo(0, "a"))
    path.on_train_start(SimpleNamespace(optimizers=[opt]), module)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module.lin.weight.grad[1, :2] = torch.tensor([0.5, -2.0])  # SGD lr 1: Δθ = -g, so |g·Δθ| = g² = [0.25, 4]
    path.on_before_optimizer_step(None, module, opt)
    opt.step()
    path.on_task_end(None, module, TaskInfo(0, "a"))
    assert path.running["lin.weight"][1, :2].tolist() == [0.0625, 1.0]
    assert int(path.running["lin.weight"].count_nonzero()) == 2


def test_sparse_regions_and_reset_by_hand() -> None:
    module = nn.Module()
    module.w = nn.Parameter(torch.zeros(5))
    cb = GradientMask(mode="sparse", fraction=0.4, reset=True)
    cb.on_task_start(None, module, TaskInfo(0, "a"))
    with torch.no_grad():
        module.w.copy_(torch.tensor([0.1, -0.5, 0.2, 0.05, 0.3]))  # what task 0 "trained"
    cb.on_task_end(None, module, TaskInfo(0, "a"))
    assert cb.masks["w"].tolist() == [False, True, False, False, True]  # the two largest changes
    assert module.w.tolist() == pytest.approx([0.0, -0.5, 0.0, 0.0, 0.3])  # the rest is reset
    cb.on_task_start(None, module, TaskInfo(1, "b"))
    with torch.no_grad():
        module.w.copy_(torch.tensor([1.0, -0.5, 0.1, 2.0, 0.3]))
    cb.on_task_end(None, module, TaskInfo(1, "b"))
    # free entries 0, 2, 3 changed by 1, 0.1, 2: entries 3 and 0 join the region
    assert cb.masks["w"].tolist() == [True, True, False, True, True]
    assert module.w.tolist() == pytest.approx([1.0, -0.5, 0.0, 2.0, 0.3])


# ---- a real run ----------------------------------------------------------------------------------------------
class MaskedWeightsProbe(Callback):
    """Runs after GradientMask: at every step the masked entries (the callback's fixed masks, or the entries whose
    gradient it zeroed in mode `magnitude`) must not move."""

    def __init__(self, mask: GradientMask) -> None:
        self.mask, self.checked, self.with_momentum, self.pending = mask, 0, 0, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.pending = []
        for name, p in pl_module.named_parameters():
            if not name.startswith("backbone.") or p.grad is None:
                continue
            if self.mask.mode == "magnitude":
                masked = p.grad == 0
            elif name in self.mask.masks:
                masked = self.mask.masks[name]
                assert not p.grad[masked].any(), name  # zeroed before clipping and the optimizer
            else:
                continue
            state = optimizer.state.get(p, {})
            if "exp_avg" in state:
                self.with_momentum += int((state["exp_avg"][masked] != 0).sum())
            self.pending.append((name, p, masked, p.detach().clone()))

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        for name, p, masked, before in self.pending:
            assert torch.equal(p.detach()[masked], before[masked]), name
            self.checked += int(masked.sum())
        self.pending = []


def test_run_keeps_masked_weights_bit_identical_with_adamw(tmp_path: Path) -> None:
    cb = GradientMask(mode="importance", fraction=0.3)
    probe = MaskedWeightsProbe(cb)
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # noqa: E731
    run_stream(tmp_path / "run", [cb, probe], max_steps=3, module_kwargs={"optimizer": optimizer})
    state = cb.state_dict()
    assert all(bits.dtype == torch.uint8 for bits in state["masks"].values())
    assert all(r.dtype == torch.bfloat16 for r in state["running"].values())
    assert not any(name.startswith("head.") for name in state["masks"])
    total = sum(m.numel() for m in cb.masks.values())
    assert sum(int(m.sum()) for m in cb.masks.values()) == sum(round(0.3 * m.numel()) for m in cb.masks.values())
    assert probe.checked == 3 * sum(int(m.sum()) for m in cb.masks.values()) > 0.29 * 3 * total  # task 1's steps
    assert cb.steps == 3

    cb = GradientMask(mode="magnitude", fraction=0.3)
    probe = MaskedWeightsProbe(cb)
    run_stream(tmp_path / "mag", [cb, probe], max_steps=4, num_tasks=1, module_kwargs={"optimizer": optimizer})
    assert probe.checked > 0 and probe.with_momentum > 0  # masked entries whose momentum would have moved them
