"""Causal-LM forward: an unpadded batch runs without an attention mask (SDPA's causal kernel) and gives the same
logits as with its all-ones mask; a padded batch keeps its mask."""

from __future__ import annotations

import torch
from clight_testing import tiny_module


def test_unpadded_batch_drops_the_mask_with_identical_logits() -> None:
    torch.manual_seed(0)
    module = tiny_module("causal_lm")
    module.configure_stream(vocab_size=100)
    module.eval()
    ids = torch.randint(0, 100, (2, 10))
    ones = torch.ones_like(ids)
    calls = []
    hook = module.backbone.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("attention_mask")),
                                                     with_kwargs=True)
    with torch.no_grad():
        logits = module({"input_ids": ids, "attention_mask": ones})["logits"]
        masked = module.backbone(input_ids=ids, attention_mask=ones).logits
        padded = ones.clone()
        padded[1, 7:] = 0
        module({"input_ids": ids, "attention_mask": padded})
    hook.remove()
    assert calls[0] is None  # the module's own call: no mask
    assert calls[2] is padded  # padding keeps its mask
    torch.testing.assert_close(logits, masked)
