"""DarkExperienceReplay: the logit-matching loss and the logits stored at task end."""

from __future__ import annotations

from pathlib import Path

import torch
from clight_testing import run_stream

from clight.callbacks import DarkExperienceReplay
from clight.callbacks.rehearsal.der import der_logit_loss


def test_der_loss_classification_by_hand() -> None:
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    stored = {"logits": torch.tensor([[0.0, 2.0], [3.0, 6.0]])}
    assert der_logit_loss(logits, stored).item() == 1.25  # (1 + 0 + 0 + 4) / 4


def test_der_loss_causal_lm_top_k_by_hand() -> None:
    logits = torch.arange(12.0).view(1, 3, 4)  # (B=1, T=3, V=4): position t holds 4t, 4t+1, 4t+2, 4t+3
    stored = {
        "topk_indices": torch.tensor([[[3, 0], [1, 2], [0, 0], [0, 0]]], dtype=torch.int32),  # (1, W=4, k=2)
        "topk_values": torch.tensor([[[3.0, 1.0], [5.0, 4.0], [9.0, 9.0], [0.0, 0.0]]]),
        "lengths": torch.tensor([2]),  # positions 2.. are padding
    }
    # position 0: student (3, 0) vs (3, 1) -> 0 + 1; position 1: student (5, 6) vs (5, 4) -> 0 + 4
    assert der_logit_loss(logits, stored).item() == 5.0 / 4


def test_logits_are_stored_at_task_end_from_the_trained_model(tmp_path: Path) -> None:
    cb = DarkExperienceReplay(memory_size=12, replay_batch_size=4, beta=0.0)
    _, module = run_stream(tmp_path / "run", [cb], max_steps=2)
    assert cb.loss_term_names == ("der",)  # DER: no label term with beta 0
    memory = cb.memory
    last = (memory.fields["task"] == 1).nonzero().squeeze(1)  # stored by the final model
    assert len(last) > 0
    module.eval()
    tokens, lengths = memory.fields["tokens"][last].long(), memory.fields["lengths"][last]
    mask = (torch.arange(tokens.shape[1]) < lengths[:, None]).long()
    with torch.no_grad():
        logits = module({"input_ids": tokens * mask, "attention_mask": mask})["logits"]
    assert memory.fields["logits"].shape == (12, module.head.linear.out_features)
    assert torch.allclose(logits, memory.fields["logits"][last], atol=1e-5)
