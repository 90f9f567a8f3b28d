"""The memory-lean causal-LM loss gives the plain shifted cross-entropy's values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clight.losses as module_lib


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=-100,
                          reduction="none")
    return nll.view(labels.shape[0], -1)


@pytest.mark.parametrize("chunked", [False, True])
def test_nll_matches_shifted_cross_entropy(chunked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 40, requires_grad=True)
    labels = torch.randint(0, 40, (3, 9))
    labels[0, 5] = labels[2, 1] = -100
    if chunked:  # force the chunked path with 4 chunks of 7 rows (and a short last one)
        monkeypatch.setattr(module_lib, "_LEAN_LOSS_ELEMENTS", 10)
        monkeypatch.setattr(module_lib, "_LEAN_LOSS_CHUNK", 7 * 40)
    out = module_lib.causal_lm_nll(logits, labels)
    ref = _reference(logits, labels)
    assert out.shape == (3, 8)
    assert out[0, 4] == 0 and out[2, 0] == 0  # positions whose next token is ignored
    torch.testing.assert_close(out, ref)
    (g_out,) = torch.autograd.grad((out * torch.arange(24.0).view(3, 8)).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * torch.arange(24.0).view(3, 8)).sum(), logits)
    torch.testing.assert_close(g_out, g_ref)


def test_bf16_logits_are_reduced_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    logits = (torch.randn(2, 5, 300) * 4).bfloat16()
    labels = torch.randint(0, 300, (2, 5))
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_ELEMENTS", 10)
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_CHUNK", 3 * 300)
    out = module_lib.causal_lm_nll(logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(logits.float(), labels))


def test_chunked_gradient_of_bf16_logits_matches_fp32_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    base = (torch.randn(2, 6, 50) * 3).bfloat16()
    labels = torch.randint(0, 50, (2, 6))
    labels[1, 3] = -100
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_ELEMENTS", 10)
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_CHUNK", 4 * 50)  # 3 chunks of 4 rows
    logits = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module_lib.causal_lm_nll(logits, labels).sum(), logits)
    ref_logits = base.float().requires_grad_(True)
    (ref,) = torch.autograd.grad(_reference(ref_logits, labels).sum(), ref_logits)
    assert grad.dtype == torch.bfloat16 and grad.shape == base.shape
    assert grad[:, -1].abs().sum() == 0 and grad[1, 2].abs().sum() == 0  # no next token / an ignored one
    torch.testing.assert_close(grad.float(), ref, atol=1e-2, rtol=1e-2)  # bf16 rounding of the gradient


def test_chunked_path_runs_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_ELEMENTS", 10)
    monkeypatch.setattr(module_lib, "_LEAN_LOSS_CHUNK", 5 * 20)
    logits, labels = torch.randn(2, 7, 20), torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        out = module_lib.causal_lm_nll(logits, labels)
    torch.testing.assert_close(out, _reference(logits, labels))


def test_compiled_loss_of_a_compile_module_matches_the_eager_one() -> None:
    # `compile: true` trains a causal LM on the compiled fused cross-entropy: same values and bf16 gradients
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 50).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 50, (2, 7))
    labels[1, 3] = -100
    compiled = module_lib.compiled_causal_lm_nll()
    assert compiled is module_lib.compiled_causal_lm_nll()  # one instance for every task's Trainer
    out = compiled(logits, labels)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    ref = _reference(logits, labels)
    (ref_grad,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert grad.dtype == torch.bfloat16 and out[1, 2] == 0  # the ignored label (position 3 predicts it)
    torch.testing.assert_close(grad.float(), ref_grad.float(), atol=1e-2, rtol=1e-2)
