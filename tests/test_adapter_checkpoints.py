"""Adapter-only checkpoints: a peft run's checkpoints leave the frozen base out and still resume exactly."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from clight_testing import TINY_BERT, CrashAt, SimulatedCrash, run_stream

from clight import ContinualModule
from clight.errors import ClightConfigError

LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}


def _lora_module(seed: int = 0) -> ContinualModule:
    pl.seed_everything(seed, verbose=False)
    module = ContinualModule(config=dict(TINY_BERT), **LORA)
    module.configure_stream(num_classes=4)
    return module


def test_lora_run_checkpoints_hold_only_trainable_tensors_and_resume_exactly(tmp_path: Path) -> None:
    ref, ref_module = run_stream(tmp_path / "ref", [], module_kwargs=LORA)
    with pytest.raises(SimulatedCrash):  # killed in the second task after its step-4 mid-task checkpoint
        run_stream(tmp_path / "crash", [CrashAt(task=1, step=5)], module_kwargs=LORA)
    trainable = {n for n, p in ref_module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.linear.") for n in trainable)
    mid = torch.load(tmp_path / "crash" / "checkpoints" / "wordnet-artifacts" / "last.ckpt", weights_only=True)
    stream = torch.load(tmp_path / "crash" / "stream.pt", weights_only=True)
    assert set(mid["state_dict"]) == trainable
    assert set(stream["module"]) == trainable
    assert len(stream["module_base"]["left_out"]) == len(ref_module.state_dict()) - len(trainable)

    res, res_module = run_stream(tmp_path / "crash", [], module_kwargs=LORA, resume=True)
    assert res["timing"]["stages"][1]["resumed_mid_task"] is True
    assert res["matrices"] == ref["matrices"]
    ref_state, res_state = ref_module.state_dict(), res_module.state_dict()
    assert set(ref_state) == set(res_state)
    for name in ref_state:
        assert torch.equal(ref_state[name], res_state[name]), name

    # the same stream fully fine-tuned: its stream checkpoint holds every weight
    run_stream(tmp_path / "full", [], max_steps=1)
    lora_bytes = (tmp_path / "ref" / "stream.pt").stat().st_size
    full_bytes = (tmp_path / "full" / "stream.pt").stat().st_size
    assert lora_bytes < 0.02 * full_bytes, (lora_bytes, full_bytes)


def test_config_built_base_is_deterministic_under_the_seed_and_another_seed_is_refused() -> None:
    a, b = _lora_module(0), _lora_module(0)
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    state, meta = a.checkpoint_state()
    b.load_state_dict(b.restore_checkpoint_state(state, meta))  # same seed: loads
    other = _lora_module(1)
    with pytest.raises(ClightConfigError, match="seed_everything"):
        other.restore_checkpoint_state(state, meta)


def test_base_weights_changed_in_place_are_kept_when_marked_and_caught_when_not() -> None:
    module = _lora_module()
    weight_name = "backbone.base_model.model.encoder.layer.0.attention.self.query.base_layer.weight"
    params = dict(module.named_parameters())
    with torch.no_grad():
        params[weight_name].add_(0.25)
    module.mark_base_modified([weight_name])
    state, meta = module.checkpoint_state()
    assert weight_name in state and weight_name not in meta["left_out"]
    fresh = _lora_module()
    fresh.load_state_dict(fresh.restore_checkpoint_state(state, meta))
    assert torch.equal(dict(fresh.named_parameters())[weight_name], params[weight_name])
    # a change nobody declared: the rebuilt base no longer matches the fingerprint, and loading says so
    sneaky = _lora_module()
    with torch.no_grad():
        dict(sneaky.named_parameters())["backbone.base_model.model.embeddings.word_embeddings.weight"][5].mul_(2)
    state, meta = sneaky.checkpoint_state()
    with pytest.raises(ClightConfigError, match="mark_base_modified"):
        _lora_module().restore_checkpoint_state(state, meta)


def test_adapter_structure_travels_with_the_checkpoint() -> None:
    module = _lora_module()
    for name in ("task_0", "task_1"):
        module.add_adapter(name)
    module.use_adapters(["task_0", "task_1"], trainable=["task_1"])
    module.delete_adapter("default")
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_()
    state, meta = module.checkpoint_state()
    fresh = _lora_module()
    fresh.load_state_dict(fresh.restore_checkpoint_state(state, meta))
    assert fresh.adapter_names == ["task_0", "task_1"]
    assert fresh.active_adapters == ["task_0", "task_1"] and fresh.trainable_adapters == ["task_1"]
    assert fresh.head.linear.weight.requires_grad  # the head still trains: only adapter flags were set
    for name, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_use_adapters_leaves_base_and_head_flags_alone() -> None:
    module = _lora_module()
    module.add_adapter("extra")
    assert module.active_adapters == ["default"] and module.trainable_adapters == ["default"]  # added frozen
    module.use_adapters(["default", "extra"], trainable=["extra"])
    assert module.trainable_adapters == ["extra"]
    module.use_adapters(["default"])
    assert module.trainable_adapters == [] and module.head.linear.weight.requires_grad
    assert not any(p.requires_grad for n, p in module.named_parameters() if "lora_" not in n and "head" not in n)
    with pytest.raises(ValueError, match="known adapters"):
        module.use_adapters(["nope"])
