"""AdaLoRABudget: peft's AdaLoRA rank allocation really runs inside clight's loop (ranks are masked to the budget
on every task's schedule), its orthogonality penalty is the one peft computes, and bad setups are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clight_testing import run_stream, tiny_module

from clight.callbacks import AdaLoRABudget
from clight.errors import ClightConfigError

ADALORA = {"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 2, "deltaT": 1, "total_step": 8,
           "target_modules": ["q_proj", "v_proj"]}


def _ranks(module) -> list[int]:
    """The unmasked singular values of every AdaLoRA matrix (non-zero entries of its `lora_E`)."""
    return [int((p != 0).sum()) for n, p in module.named_parameters() if "lora_E" in n]


def test_ranks_are_cut_to_the_budget_on_every_task(tmp_path: Path) -> None:
    results, module = run_stream(tmp_path / "with", [AdaLoRABudget()], kind="causal_lm", max_steps=8,
                                 module_kwargs={"peft": ADALORA})
    ranks = _ranks(module)
    assert ranks and sum(ranks) == 2 * len(ranks)  # the total budget: target_r per matrix, shared among them
    tuner = module.peft_model.base_model
    pattern = tuner.peft_config["default"].rank_pattern
    assert pattern and all(len(v) == 4 for v in pattern.values())  # init_r entries, some masked
    # Without the callback nothing steps the allocator: every rank stays at init_r.
    _, plain = run_stream(tmp_path / "without", [], kind="causal_lm", max_steps=8, module_kwargs={"peft": ADALORA})
    assert _ranks(plain) == [4] * len(ranks)


def test_the_penalty_is_peft_s_orthogonality_loss() -> None:
    module = tiny_module("causal_lm", peft=dict(ADALORA))
    module.configure_stream(vocab_size=64)
    got = AdaLoRABudget(orth_reg_weight=0.25).loss_terms(None, module, {}, {})["adalora_orth"]
    assert got.requires_grad
    # peft adds the same penalty itself to a loss it computes from `labels`: its loss with and without the penalty
    peft_model, config = module.peft_model, module.peft_model.base_model.peft_config["default"]
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        config.orth_reg_weight = 0.25
        with_penalty = peft_model(input_ids=ids, labels=ids).loss
        config.orth_reg_weight = 0.0
        without = peft_model(input_ids=ids, labels=ids).loss
    assert float(with_penalty - without) > 0
    assert float(got) == pytest.approx(float(with_penalty - without), rel=1e-5)


def test_a_model_without_adalora_is_refused_with_the_config_to_use(tmp_path: Path) -> None:
    with pytest.raises(ClightConfigError, match=r"`AdaLoRABudget` needs an AdaLoRA model: `model.peft: \{peft_type: ADALORA"):
        run_stream(tmp_path, [AdaLoRABudget()], kind="causal_lm", max_steps=1,
                   module_kwargs={"peft": {"r": 4, "target_modules": ["q_proj", "v_proj"]}})
