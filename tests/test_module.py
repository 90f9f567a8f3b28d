"""ContinualModule: model loading, heads, loss terms, peft, and the errors users meet."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from clight_testing import MINILM, TINY_BERT, tiny_module

from clight import ContinualCallback, ContinualModule
from clight.contracts import ContinualModel
from clight.errors import ClightConfigError
from clight.heads import mean_pool


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_real_pretrained_minilm_loads_offline_and_classifies_from_mean_pooled_states() -> None:
    module = ContinualModule(model=MINILM)
    module.configure_stream(num_classes=5, vocab_size=30522)
    assert module.backbone.pooler is None  # the [CLS] pooler is dropped: we mean-pool
    assert sum(p.numel() for p in module.backbone.parameters()) == pytest.approx(22.7e6, rel=0.02)
    batch = {"input_ids": torch.tensor([[101, 7592, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    out = module(batch)
    assert out["logits"].shape == (1, 5) and out["features"].shape == (1, 384)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "/no/such/folder"}, "does not exist"),
        ({"model": "pkg:no_such_model_package"}, "pip install no-such-model-package"),
        ({}, "give exactly one"),
        ({"model": MINILM, "config": TINY_BERT}, "give exactly one"),
        ({"config": {"hidden_size": 8}}, "model_type"),
        ({"config": TINY_BERT, "num_classes": 0}, "num_classes"),
    ],
    ids=["missing-path", "missing-package", "neither", "both", "no-model-type", "zero-classes"],
)
def test_bad_model_arguments_get_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ClightConfigError, match=match):
        ContinualModule(**kwargs)


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ClightConfigError, match="not a Hugging Face model folder"):
        ContinualModule(model=str(tmp_path))


def test_tokenizer_larger_than_the_embedding_is_refused() -> None:
    module = ContinualModule(config={**TINY_BERT, "vocab_size": 100})
    with pytest.raises(ClightConfigError, match="tokenizer/model mismatch"):
        module.configure_stream(num_classes=2, vocab_size=30522)


def test_config_without_vocab_size_takes_the_tokenizer_size() -> None:
    module = tiny_module("causal_lm")
    assert module.backbone is None
    module.configure_stream(vocab_size=384)
    assert module.backbone.get_input_embeddings().num_embeddings == 384


class _ConstTerm(ContinualCallback):
    @property
    def loss_term_names(self):
        return ("const",)

    def loss_terms(self, trainer, pl_module, batch, outputs):
        return {"const": 0.5 * torch.tensor(2.0)}


def test_loss_terms_of_the_trainer_callbacks_add_to_the_task_loss() -> None:
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([1])}
    module.eval()
    base = module.task_loss(batch, module(batch))
    logged = {}
    module.log = lambda name, value, **k: logged.__setitem__(name, float(value))  # no trainer to log to
    term = _ConstTerm()
    module.trainer = SimpleNamespace(callbacks=[term])
    assert torch.allclose(module.training_step(batch, 0), base + 1.0)
    assert logged["train/loss_const"] == 1.0 and logged["train/loss_task"] == pytest.approx(float(base))
    assert term._terms_collected


def test_peft_lora_trains_only_the_adapter_and_the_head() -> None:
    module = ContinualModule(config=TINY_BERT, peft={"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]})
    module.configure_stream(num_classes=4)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.linear.") for n in trainable)
    with pytest.raises(ClightConfigError, match="`peft`"):
        ContinualModule(config=TINY_BERT, peft={"r": 4, "no_such_option": 1})


class _NeedsModel(ContinualCallback):
    module_contracts = (ContinualModel,)


class _Plain(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)


def test_callback_needing_a_missing_contract_fails_in_setup_naming_the_members() -> None:
    with pytest.raises(ClightConfigError, match=r"`_NeedsModel` needs a module that provides \['per_example_loss', "
                                                r"'task_loss'\] \(`clight.contracts.ContinualModel`\)"):
        _NeedsModel().setup(pl.Trainer(logger=False), _Plain(), "fit")
