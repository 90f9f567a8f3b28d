"""LoRAPerTask, ChainOfLoRA, OrthogonalLoRA: what each guarantees, checked against hand computations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from clight_testing import TINY_BERT, run_stream, tiny_module
from lightning.pytorch.callbacks import Callback

from clight import ContinualModule
from clight.callbacks import ChainOfLoRA, LoRAPerTask, OrthogonalLoRA
from clight.callbacks.lora.orthogonal_lora import orthogonality_loss
from clight.errors import ClightConfigError

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
BATCH = {"input_ids": torch.tensor([[101, 2054, 2003, 1037, 3899, 102], [101, 1996, 4937, 102, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])}


def _lora_module(num_classes: int = 4, **kwargs) -> ContinualModule:
    pl.seed_everything(0, verbose=False)
    module = ContinualModule(config=dict(TINY_BERT), peft=dict(LORA), **kwargs)
    module.configure_stream(num_classes=num_classes, task_classes=[[0, 1], [2, 3]])
    return module


@torch.no_grad()
def _outputs(module: ContinualModule, adapter: str, classes: list[int]) -> torch.Tensor:
    """Logits of the task's own classes on a fixed batch with ``adapter`` active (eval mode; state restored)."""
    before = (module.active_adapters, module.trainable_adapters)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    module.use_adapters([adapter])
    logits = module(BATCH)["logits"][:, classes].clone()
    module.use_adapters(*before)
    for m, training in modes:
        m.training = training
    return logits


class TaskEndOutputs(Callback):
    """After every task: the first task's own-class logits with ``adapter``, and its adapter and head rows."""

    def __init__(self, adapter: str) -> None:
        self.adapter, self.snapshots = adapter, []

    def on_fit_end(self, trainer: pl.Trainer, module: ContinualModule) -> None:
        classes = module.task_classes[0]
        self.snapshots.append({
            "logits": _outputs(module, self.adapter, classes),
            "head": module.head.linear.weight.detach()[classes].clone(),
            "adapter": {n: p.detach().clone() for n, p in module.named_parameters() if f".{self.adapter}." in n},
        })


class ActiveAdapterSpy(Callback):
    """Which adapters were active for each evaluation loader, per evaluation."""

    def __init__(self) -> None:
        self.evaluations: list[dict[int, list[str]]] = []

    def on_validation_start(self, trainer, module) -> None:
        self.evaluations.append({})

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self.evaluations[-1][dataloader_idx] = module.active_adapters


def test_lora_per_task_keeps_earlier_tasks_bit_identical_and_evaluates_each_with_its_adapter(tmp_path: Path) -> None:
    probe, spy = TaskEndOutputs("task_0"), ActiveAdapterSpy()
    results, module = run_stream(tmp_path / "run", [LoRAPerTask(), probe, spy], num_tasks=3, max_steps=4,
                                 module_kwargs={"peft": dict(LORA)}, stream_kwargs={"scenario": "task_incremental"})
    assert module.adapter_names == ["task_0", "task_1", "task_2"]
    first, *later = probe.snapshots
    for snap in later:  # task 0's outputs, head rows and adapter after tasks 1 and 2: bit-identical
        assert torch.equal(snap["logits"], first["logits"])
        assert torch.equal(snap["head"], first["head"])
        for name, value in first["adapter"].items():
            assert torch.equal(snap["adapter"][name], value), name
    til = results["matrices"]["task_il_acc"]["matrix"]
    assert til[1][0] == til[0][0] and til[2][0] == til[0][0] and til[2][1] == til[1][1]
    assert results["summary"]["task_il_acc"]["forgetting"] == 0.0
    initial, after0, after1, after2 = spy.evaluations
    assert set(map(tuple, initial.values())) == {("default",)}  # before any task: the (identity) peft adapter
    assert after0 == {0: ["task_0"], 1: ["task_0"], 2: ["task_0"]}  # unseen tasks: the latest adapter
    assert after1 == {0: ["task_0"], 1: ["task_1"], 2: ["task_1"]}
    assert after2 == {0: ["task_0"], 1: ["task_1"], 2: ["task_2"]}


def test_without_lora_per_task_the_first_task_outputs_move(tmp_path: Path) -> None:
    """The same check on plain sequential LoRA fails: the guarantee above is the callback's doing."""
    probe = TaskEndOutputs("default")
    run_stream(tmp_path / "run", [probe], max_steps=3, module_kwargs={"peft": dict(LORA)},
               stream_kwargs={"scenario": "task_incremental"})
    assert not torch.equal(probe.snapshots[0]["logits"], probe.snapshots[1]["logits"])
    assert not torch.equal(probe.snapshots[0]["head"], probe.snapshots[1]["head"])


@pytest.mark.parametrize("cls", [LoRAPerTask, ChainOfLoRA, OrthogonalLoRA])
def test_lora_callbacks_refuse_a_module_without_peft(cls: type) -> None:
    module = tiny_module(num_classes=4)
    module.configure_stream(num_classes=4)
    with pytest.raises(ClightConfigError, match=r"model\.peft: \{r: 8, target_modules"):
        cls().setup(pl.Trainer(logger=False, enable_progress_bar=False), module, "fit")


def test_lora_per_task_refuses_classes_shared_between_tasks() -> None:
    module = _lora_module(num_classes=2)
    module.configure_stream(num_classes=2, task_classes=[[0, 1], [0, 1]])
    with pytest.raises(ClightConfigError, match=r"classes \[0, 1\] belong to several tasks"):
        LoRAPerTask().setup(pl.Trainer(logger=False, enable_progress_bar=False), module, "fit")


# ---- ChainOfLoRA -------------------------------------------------------------------------------------------
@torch.no_grad()
def test_merge_adds_scale_b_a_to_the_base_weight_and_restart_keeps_the_function() -> None:
    module = _lora_module().eval()
    layer = module.lora_layers()[0]  # layer 0's query
    base = layer.get_base_layer().weight
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 32, generator=g)
    b = torch.randn(32, 4, generator=g)
    layer.lora_A["default"].weight.copy_(a)
    layer.lora_B["default"].weight.copy_(b)
    expected = base.clone() + (8 / 4) * b @ a  # lora_alpha / r = 2
    before = module(BATCH)["logits"]
    ChainOfLoRA()._merge_and_restart(SimpleNamespace(datamodule=None), module, 0)  # merge, then a fresh adapter
    assert torch.allclose(base, expected, atol=1e-6)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    assert torch.count_nonzero(layer.lora_A["default"].weight) > 0
    assert not torch.equal(layer.lora_A["default"].weight, a)
    assert torch.allclose(module(BATCH)["logits"], before, atol=1e-5)  # same function after merge + restart
    state, meta = module.checkpoint_state()  # merged base weights now travel with the adapter-only checkpoint
    changed = meta["modified"]
    assert "backbone.base_model.model.encoder.layer.0.attention.self.query.base_layer.weight" in changed
    assert len(changed) == 4  # query and value of 2 layers
    assert set(changed) <= set(state) and not set(changed) & set(meta["left_out"])


def test_periodic_merges_every_n_steps_reset_the_adapter_optimizer_state_once_per_step() -> None:
    module = _lora_module()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    adapter = {id(p) for n, p in module.named_parameters() if "lora_" in n}
    cb = ChainOfLoRA(every_n_steps=2)
    trainer = SimpleNamespace(datamodule=None, optimizers=[optimizer], global_step=0)
    for step in [1, 2]:
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module)
    assert cb.merges == 1
    assert not any(id(p) in adapter for p in optimizer.state)  # the adapter's moments are cleared
    assert any(id(p) not in adapter for p in optimizer.state)  # the head keeps its own
    optimizer.step()  # AdamW starts the cleared parameters afresh
    for step in [2, 3, 4, 5, 6]:  # step 2 ends again (gradient accumulation): no second merge
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module)
    assert cb.merges == 3 and cb.last_merge == [0, 6]
    cb.on_task_end(trainer, module, SimpleNamespace(index=0))  # just merged at this step: nothing left to merge
    assert cb.merges == 3
    trainer.global_step = 7
    cb.on_task_end(trainer, module, SimpleNamespace(index=0))
    assert cb.merges == 4


# ---- OrthogonalLoRA ----------------------------------------------------------------------------------------
def test_orthogonality_loss_by_hand() -> None:
    old = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]])  # (L=2, 2, 3)
    new = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 1.0, 0.0]]])  # (L=2, r=1, 3)
    # layer 0: old @ newᵀ = [1, 2] -> 1 + 4; layer 1: [0, 1] -> 1
    assert orthogonality_loss(old, new).item() == 6.0
    # layer 0: [0, 3] -> 9; layer 1: [2, 1] -> 5
    assert orthogonality_loss(old, torch.tensor([[[0.0, 3.0, 4.0]], [[1.0, 0.0, 2.0]]])).item() == 14.0
    assert orthogonality_loss(old[:1], torch.tensor([[[0.0, 0.0, 2.0]]])).item() == 0.0


def _overlap(module: ContinualModule) -> float:
    """sum over layers of ||A_task0 A_task1ᵀ||², by hand from the module's adapters."""
    total = 0.0
    for layer in module.lora_layers():
        a0, a1 = layer.lora_A["task_0"].weight.detach(), layer.lora_A["task_1"].weight.detach()
        total += float((a0 @ a1.T).pow(2).sum())
    return total


class OverlapAtTaskStart(Callback):
    def __init__(self) -> None:
        self.values, self.task0 = [], None

    def on_fit_start(self, trainer, module) -> None:
        if "task_1" in module.adapter_names:
            self.values.append(_overlap(module))
            self.task0 = {n: p.detach().clone() for n, p in module.named_parameters() if ".task_0." in n}


def test_orthogonal_lora_sums_frozen_earlier_adapters_and_pushes_the_new_one_away(tmp_path: Path) -> None:
    probe = OverlapAtTaskStart()
    module_kwargs = {"peft": dict(LORA), "optimizer": lambda params: torch.optim.AdamW(params, lr=2e-2)}
    _, module = run_stream(tmp_path / "run", [OrthogonalLoRA(lambda_orth=10.0), probe], max_steps=6,
                           module_kwargs=module_kwargs)
    assert module.adapter_names == ["task_0", "task_1"]
    assert module.active_adapters == ["task_0", "task_1"] and module.trainable_adapters == ["task_1"]
    for name, value in probe.task0.items():  # the earlier adapter is frozen
        assert torch.equal(dict(module.named_parameters())[name], value), name
    assert _overlap(module) < 0.5 * probe.values[0], (probe.values[0], _overlap(module))
