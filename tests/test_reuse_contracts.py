"""A half-built adapter in a foreign Lightning project (a module or datamodule with only part of what a technique
needs) is refused in `setup`, before any training, with one line naming what is missing and the way out; and what
a module that declares no head, collects no loss terms or yields tuple batches is told."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from reuse_modules import loader, make_module, run_tasks, task_rows, undeclared
from torch.utils.data import DataLoader

import clight.callbacks as cb
from clight.errors import ClightConfigError


class NoLosses(pl.LightningModule):  # forward only: no `task_loss` / `per_example_loss`
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(6, 6)

    def forward(self, batch):
        return {"logits": self.net(batch["x"])}

    def training_step(self, batch, batch_idx):
        return self(batch)["logits"].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class PeftWithoutMixin(NoLosses):  # holds a peft model but not `AdapterMixin`
    def __init__(self) -> None:
        super().__init__()
        import peft

        self.net = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(6, 6)),
                                       peft.LoraConfig(r=2, target_modules=["0"]))


class HalfStream(pl.LightningDataModule):  # `train_examples` without `collate`
    train_examples = [[{"x": [0.0] * 6, "labels": 0}]]

    def train_dataloader(self):
        return loader("mlp", 0)


def _tuple_loader():
    rows = task_rows("mlp", 0)
    return DataLoader([(r["x"], r["labels"]) for r in rows], batch_size=8)


def _no_head_bert():
    return undeclared(make_module("bert"), "output_head")


@pytest.mark.parametrize("make_cb, make_module_, data, message", [
    (lambda: cb.Replay(), NoLosses, lambda: loader("mlp", 0),
     r"`Replay` needs a module that provides \['per_example_loss', 'task_loss'\] \(`clight.contracts.ContinualModel`\)"),
    (lambda: cb.EWC(), lambda: make_module("mlp"), HalfStream,
     r"`EWC` needs a datamodule that provides \['collate'\] \(`clight.contracts.ExampleStream`\), which `HalfStream`"),
    (lambda: cb.LoRAPerTask(), PeftWithoutMixin, lambda: loader("mlp", 0),
     r"`LoRAPerTask` needs a module that provides \['active_adapters', 'adapter_names', 'add_adapter', .*"
     r"Subclass `clight.adapters.AdapterMixin` first"),
    (lambda: cb.FreezeParameters(preset="bitfit", head="clasifier"), lambda: make_module("mlp"),
     lambda: loader("mlp", 0), r"`head` must name a submodule of `MLP`.*'clasifier'.*\['net', 'classifier'\]"),
    (lambda: cb.WeightInterpolation(interpolate_head=False), _no_head_bert, lambda: loader("bert", 0),
     r"`interpolate_head`: false keeps the output head fine-tuned, but `TinyBert` declares none"),
    (lambda: cb.HalfFineTuning(), lambda: make_module("mlp"), lambda: loader("mlp", 0),
     r"`HalfFineTuning` found no transformer layers"),
    (lambda: cb.FeatureDistillation(), lambda: undeclared(make_module("mlp"), "feature_blocks"), lambda: loader("mlp", 0),
     r"`FeatureDistillation` could not find the transformer blocks of MLP.*declare `feature_blocks\(\)`"),
], ids=["losses", "collate", "mixin", "head", "wise_head", "hft_on_mlp", "feature_blocks"])
def test_a_half_built_adapter_is_one_line_naming_what_is_missing(make_cb, make_module_, data, message,
                                                                 tmp_path) -> None:
    module = make_module_()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = pl.Trainer(max_epochs=1, callbacks=[make_cb()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ClightConfigError, match=message) as err:
        trainer.fit(module, data())
    assert "\n" not in str(err.value) and trainer.global_step == 0  # refused in `setup`, before any training
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())


def test_rehearsal_rows_need_dict_batches_and_say_so_at_the_first_step(tmp_path) -> None:
    trainer = pl.Trainer(max_epochs=1, callbacks=[cb.Replay()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ClightConfigError, match=r"`Replay` keeps rows of the training batches .* must be a dict of "
                                                r"tensors .* got a `list`") as err:
        trainer.fit(make_module("mlp"), _tuple_loader())
    assert "\n" not in str(err.value) and trainer.global_step == 0


def test_a_module_that_does_not_collect_the_loss_terms_is_stopped_at_its_first_step(tmp_path) -> None:
    module = make_module("mlp")
    module.training_step = lambda batch, batch_idx: module.task_loss(batch, module(batch))
    trainer = pl.Trainer(max_steps=1, callbacks=[cb.Distillation()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ClightConfigError, match=r"`Distillation` adds the loss terms \['distill'\], but "
                                                r"`MLP.training_step` did not collect them.*add_loss_terms"):
        trainer.fit(module, loader("mlp", 0))


def _moved(run, name: str) -> bool:
    return not torch.equal(run.start[0][name], run.end[0][name])


def test_a_module_that_declares_no_head_is_warned_that_its_classifier_is_frozen_like_any_layer(tmp_path) -> None:
    module = undeclared(make_module("mlp"), "output_head")
    with pytest.warns(UserWarning, match=r"`FreezeParameters`: `MLP` declares no output head.*`output_head\(\)`"):
        run = run_tasks("mlp", [cb.FreezeParameters(preset="bitfit")], tmp_path, module=module, tasks=1)
    assert not _moved(run, "classifier.weight") and _moved(run, "classifier.bias")
