"""`model.peft` takes any peft config, not only LoRA: IA³, prompt tuning and prefix tuning train their own
parameters on an instruction stream (the base stays as built), and their adapter-only checkpoints resume exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clight_testing import CrashAt, SimulatedCrash, run_stream
from lightning.pytorch.callbacks import Callback

SPECS = {
    "ia3": {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"]},
    "prompt_tuning": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4},
    "prefix_tuning": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4},
}


class _FirstWeights(Callback):
    """The module's weights as the stream's first task starts training."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.state:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_a_peft_method_trains_only_its_own_parameters_and_resumes_exactly(tmp_path: Path, name: str) -> None:
    spec = SPECS[name]
    first = _FirstWeights()
    ref, module = run_stream(tmp_path / "ref", [first], kind="instruction", max_steps=4, module_kwargs={"peft": spec})
    before = first.state
    after = module.state_dict()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(any(tag in n for tag in ("ia3_", "prompt_encoder")) for n in trainable), trainable
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved, "training changed nothing"
    assert moved <= trainable, f"a frozen tensor changed: {sorted(moved - trainable)[:3]}"
    assert "rouge_l" in ref["summary"] and len(ref["matrices"]["rouge_l"]["matrix"]) == 2
    with pytest.raises(SimulatedCrash):
        run_stream(tmp_path / "b", [CrashAt(task=1, step=3)], kind="instruction", max_steps=4,
                   module_kwargs={"peft": spec})
    resumed, res_module = run_stream(tmp_path / "b", [], kind="instruction", max_steps=4, resume=True,
                                     module_kwargs={"peft": spec})
    assert resumed["matrices"] == ref["matrices"]
    for key, value in after.items():
        assert torch.equal(value, res_module.state_dict()[key]), key
