"""FreezeParameters and HalfFineTuning: selectors and presets by hand on the tiny BERT, real freezing before the
optimizer, per-task schedules, HFT's seeded half-per-layer choice, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clight_testing import run_stream, tiny_module
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

from clight.callbacks import FreezeParameters, HalfFineTuning
from clight.callbacks._utils import seeded_generator
from clight.callbacks.masking.base import set_frozen
from clight.errors import ClightConfigError
from clight.functional.masking import hft_choose, hft_units, normalize_name, parse_selector, select

BERT_LAYER = [  # the 16 parameters of one tiny-BERT layer, in order
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
    "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
]
EMB = [f"backbone.embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                            "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")]
HEAD = ["head.linear.weight", "head.linear.bias"]


def layer(i: int, *suffixes: str) -> list[str]:
    return [f"backbone.encoder.layer.{i}.{s}" for s in (suffixes or BERT_LAYER)]


@pytest.fixture(scope="module")
def bert():
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    return module


def names_of(module) -> list[str]:
    return [n for n, _ in module.named_parameters()]


def test_tiny_bert_names_are_what_the_tests_assume(bert) -> None:
    assert names_of(bert) == EMB + layer(0) + layer(1) + HEAD


@pytest.mark.parametrize("selector, expected", [
    ("embeddings", EMB),  # a dotted run of whole segments, anywhere in the name
    ("encoder.layer.1", layer(1)),
    ("attention.self.query", layer(0, "attention.self.query.weight", "attention.self.query.bias")
     + layer(1, "attention.self.query.weight", "attention.self.query.bias")),
    ("head", HEAD),
    ("backbone.encoder.layer.0.output.dense.bias", layer(0, "output.dense.bias")),
    ("*.attention.self.*.bias", [n for i in (0, 1) for n in layer(i, "attention.self.query.bias",
                                                                    "attention.self.key.bias",
                                                                    "attention.self.value.bias")]),
    ("*LayerNorm.weight", ["backbone.embeddings.LayerNorm.weight"]
     + [n for i in (0, 1) for n in layer(i, "attention.output.LayerNorm.weight", "output.LayerNorm.weight")]),
    (r"re:layer\.1\.(intermediate|output)\.dense", layer(1, "intermediate.dense.weight", "intermediate.dense.bias",
                                                         "output.dense.weight", "output.dense.bias")),
    ("layers:0", layer(0)),
    ("layers:0-1", layer(0) + layer(1)),
    ("layers:1-", layer(1)),
    ("layer.0.output", layer(0, "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight",
                             "output.LayerNorm.bias")),  # whole segments: `attention.output` does not match
])
def test_selectors_by_hand(bert, selector: str, expected: list[str]) -> None:
    assert sorted(select(names_of(bert), [parse_selector(selector)])) == sorted(expected)


def test_compiled_names_are_normalized() -> None:
    assert normalize_name("backbone._orig_mod.encoder.layer.0.output.dense.bias") == \
        "backbone.encoder.layer.0.output.dense.bias"


@pytest.mark.parametrize("kwargs, trainable", [
    ({"preset": "bitfit"}, [n for n in EMB + layer(0) + layer(1) if n.endswith(".bias")] + HEAD),
    ({"preset": "layernorm"}, [n for n in EMB + layer(0) + layer(1) if "LayerNorm" in n] + HEAD),
    ({"preset": "embeddings"}, layer(0) + layer(1) + HEAD),
    ({"preset": "lower_layers", "num_layers": 1}, layer(1) + HEAD),
    ({"train_only": ["layers:1"], "freeze_head": True}, layer(1)),
    ({"freeze": ["*.bias"], "train_only": ["layers:1"]}, [n for n in layer(1) if not n.endswith(".bias")] + HEAD),
    ({"freeze": ["head"]}, EMB + layer(0) + layer(1) + HEAD),  # the head stays trainable without freeze_head
])
def test_presets_and_combinations_by_hand(bert, kwargs: dict, trainable: list[str]) -> None:
    frozen = FreezeParameters(**kwargs).frozen_names(bert, 0)
    assert sorted(set(names_of(bert)) - frozen) == sorted(trainable)


def _trainer(strategy=None) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy or SingleDeviceStrategy(torch.device("cpu")), datamodule=None)


@pytest.mark.parametrize("kwargs, words", [
    ({"freeze": ["encoder.layer.7"]}, ["`freeze`", "'encoder.layer.7'", "matches no parameter"]),
    ({"train_only": ["*.gamma"]}, ["`train_only`", "'*.gamma'", "matches no parameter"]),
    ({"freeze": ["embeddings"], "schedule": {2: {"freeze": ["layers:5-6"]}}},
     ["`schedule[2].freeze`", "'layers:5-6'"]),
    ({"preset": "lower_layers", "num_layers": 3}, ["`num_layers`", "2 transformer layers"]),
])
def test_selector_matching_nothing_is_a_clear_error(bert, kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ClightConfigError) as err:
        FreezeParameters(**kwargs).setup(_trainer(), bert, "fit")
    assert all(w in str(err.value) for w in words), str(err.value)
    assert all(p.requires_grad for p in bert.parameters())  # nothing was frozen


def test_bad_selectors_fail_in_the_constructor() -> None:
    with pytest.raises(ClightConfigError, match=r"`freeze\[1\]` = 're:\[' is not a valid selector"):
        FreezeParameters(freeze=["embeddings", "re:["])
    with pytest.raises(ClightConfigError, match=r"`schedule\[1\]\.train_only\[0\]`.*layer range is empty"):
        FreezeParameters(schedule={1: {"train_only": ["layers:2-1"]}})


def test_sharded_strategies_are_refused(bert) -> None:
    for cb in (FreezeParameters(preset="bitfit"), HalfFineTuning()):
        with pytest.raises(ClightConfigError, match="FSDPStrategy"):
            cb.setup(_trainer(FSDPStrategy()), bert, "fit")


def test_owners_only_unfreeze_what_they_froze() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    module[1].bias.requires_grad_(False)  # frozen by someone else (a peft base model)
    set_frozen(module, "a", {"0.weight", "1.bias"})
    set_frozen(module, "b", {"0.weight", "1.weight"})
    assert [p.requires_grad for p in module.parameters()] == [False, True, False, False]
    set_frozen(module, "a", set())  # `b` still freezes 0.weight; 1.bias was never ours to unfreeze
    assert [p.requires_grad for p in module.parameters()] == [False, True, False, False]
    set_frozen(module, "b", set())
    assert [p.requires_grad for p in module.parameters()] == [True, True, True, False]


class Recorder(Callback):
    """Per task: requires_grad at `setup` (before any optimizer), the optimizer's parameters, weights around fit."""

    def __init__(self) -> None:
        self.trainable, self.in_optimizer, self.before, self.after, self.optimizers_at_setup = [], [], [], [], []

    def setup(self, trainer, pl_module, stage) -> None:
        if stage == "fit":
            self.optimizers_at_setup.append(len(trainer.optimizers))
            self.trainable.append({n for n, p in pl_module.named_parameters() if p.requires_grad})

    def on_train_start(self, trainer, pl_module) -> None:
        ids = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        self.in_optimizer.append({n for n, p in pl_module.named_parameters() if id(p) in ids})
        self.before.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_end(self, trainer, pl_module) -> None:
        self.after.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def test_frozen_before_the_optimizer_absent_from_it_and_scheduled_per_task(tmp_path: Path) -> None:
    freeze = FreezeParameters(freeze=["embeddings", "layers:0"], schedule={1: {"freeze": ["layers:1"]}})
    rec = Recorder()
    run_stream(tmp_path / "run", [freeze, rec], max_steps=2)
    everything = set(EMB + layer(0) + layer(1) + HEAD)
    expected = [everything - set(EMB + layer(0)), everything - set(layer(1))]  # task 1 unfreezes what task 0 froze
    assert rec.optimizers_at_setup == [0, 0]
    assert rec.trainable == expected
    assert rec.in_optimizer == expected
    for task, trainable in enumerate(expected):
        for name in everything:
            same = torch.equal(rec.before[task][name], rec.after[task][name])
            assert same == (name not in trainable), (task, name)
    assert freeze.state_dict()["frozen_counts"] == {0: 21, 1: 16}


# ---- Half Fine-Tuning ------------------------------------------------------------------------------------------
def test_hft_units_follow_the_categories(bert) -> None:
    units = hft_units(names_of(bert))
    assert sorted(units) == [0, 1]
    p = "backbone.encoder.layer.0."
    assert units[0] == {
        "attention": [p + "attention.self.query", p + "attention.self.key", p + "attention.self.value",
                      p + "attention.output.dense"],
        "mlp": [p + "intermediate.dense", p + "output.dense"],
        "norm": [p + "attention.output.LayerNorm", p + "output.LayerNorm"],
    }


def test_hft_choice_is_seeded_half_per_layer_and_changes_across_tasks(bert) -> None:
    units = hft_units(names_of(bert))
    choices = [hft_choose(units, seeded_generator(0, task, 0x4F7)) for task in range(4)]
    assert choices[0] == hft_choose(units, seeded_generator(0, 0, 0x4F7))  # same (seed, task): same choice
    assert len({tuple(c) for c in choices}) > 1 and choices[0] != choices[1]
    for chosen in choices:
        for index, groups in units.items():
            for category, members in groups.items():
                assert len([u for u in chosen if u in members]) == len(members) // 2, (index, category)


def test_hft_freezes_the_unchosen_modules_with_their_biases_and_the_embeddings(bert) -> None:
    hft = HalfFineTuning(seed=3)
    trained = hft.choose(bert, 0, seed=3)
    frozen = hft.frozen_names(bert, trained)
    layer_names = layer(0) + layer(1)
    assert frozen == set(EMB) | {n for n in layer_names if n.rpartition(".")[0] not in trained}
    assert len([n for n in layer_names if n not in frozen]) == 16  # half of every layer: 8 of its 16 tensors
    assert sorted(set(names_of(bert)) - frozen - set(layer_names)) == sorted(HEAD)
    assert HalfFineTuning(train_embeddings=True).frozen_names(bert, trained) == frozen - set(EMB)


def test_hft_on_llama_odd_feed_forward_and_lm_head() -> None:
    module = tiny_module("causal_lm")
    module.configure_stream(vocab_size=384)
    names = names_of(module)
    units = hft_units(names)
    assert [len(units[0][c]) for c in ("attention", "mlp", "norm")] == [4, 3, 2]
    counts = set()
    for task in range(8):
        chosen = hft_choose(units, seeded_generator(0, task, 0x4F7))
        counts.add(len([u for u in chosen if u in units[0]["mlp"]]))
        assert len([u for u in chosen if u in units[0]["attention"]]) == 2
    assert counts == {1, 2}  # three FFN matrices: one or two on a coin
    frozen = HalfFineTuning().frozen_names(module, [])
    assert {"backbone.model.embed_tokens.weight", "backbone.lm_head.weight"} <= frozen
    assert "backbone.model.norm.weight" not in frozen


def test_hft_run_records_and_applies_the_choice(tmp_path: Path) -> None:
    hft, rec = HalfFineTuning(), Recorder()
    run_stream(tmp_path / "run", [hft, rec], max_steps=2)
    state = hft.state_dict()
    assert sorted(state["choices"]) == [0, 1] and state["choices"][0] != state["choices"][1]
    for task in (0, 1):
        chosen = set(state["choices"][task])
        trainable_layers = {n.rpartition(".")[0] for n in rec.trainable[task] if ".layer." in n}
        assert trainable_layers == chosen
        assert rec.in_optimizer[task] == rec.trainable[task]
        assert not set(EMB) & rec.trainable[task] and set(HEAD) <= rec.trainable[task]
    fresh = HalfFineTuning()
    fresh.load_state_dict(state)
    assert fresh.choose(tiny_module(num_classes=3), 1, seed=123) == state["choices"][1]  # recorded choice wins


def test_hft_without_redraw_trains_the_first_tasks_half_in_every_task(bert) -> None:
    hft = HalfFineTuning(redraw=False)
    first = hft.choose(bert, 0, seed=0)
    assert first == HalfFineTuning().choose(bert, 0, seed=0)  # the first draw is HFT's draw
    assert hft.choose(bert, 1, seed=0) == first and hft.choose(bert, 4, seed=0) == first
    assert HalfFineTuning().choose(bert, 1, seed=0) != first  # with redraw (the default) task 1 draws anew
    assert HalfFineTuning(redraw=True).state_key != hft.state_key
    with pytest.raises(ClightConfigError, match="redraw"):
        HalfFineTuning(redraw="no")
