"""FSDP2 (Lightning's ModelParallelStrategy, 2 CPU processes, gloo) against DDP on the same tiny streams.

Both are data parallel over the same batches with averaged gradients, so the sharded run must reach the weights,
result matrices and callback state of the DDP run while each rank holds only half of every parameter; and a
run killed mid-task and resumed must end where the uninterrupted run ends (under both strategies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from clight_testing import fake_module, tiny_module
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from clight.callbacks import AGEM, Distillation, L2Anchor, Replay
from clight.errors import ClightConfigError
from clight.hub import transformer_blocks
from clight.sharding import gather_full, shard_module

SCENARIOS = ["naive", "naive_causal_lm", "l2_anchor", "ewc", "online_ewc_true_fisher_causal_lm", "mas",
             "freeze_schedule", "hft", "replay_per_batch", "replay_causal_lm", "der", "gmask_magnitude",
             "gmask_magnitude_global", "gmask_importance_path", "gmask_importance_fisher", "gmask_sparse_reset",
             "distillation", "distillation_causal_lm", "feature_distillation", "si", "ema", "ema_continue_from_ema"]
RESUMED = ["resume_naive", "resume_si", "resume_gmask_importance_fisher", "resume_distillation", "resume_ema"]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("sharded")
    script = Path(__file__).resolve().parent / "sharded_harness_script.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(script), str(out), *SCENARIOS, *RESUMED], env=env,
                          capture_output=True, text=True, timeout=600)
    return out, proc


def _load(path: Path, proc: subprocess.CompletedProcess) -> dict[str, Any]:
    errors = sorted(path.parent.glob("error-rank*.txt")) + sorted(path.parent.parent.glob("error-rank*.txt"))
    assert not errors, "\n".join(e.read_text()[-3000:] for e in errors)
    assert path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(path, weights_only=True)


def assert_close_tree(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, f"{path}: {a.shape} vs {getattr(b, 'shape', b)}"
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ"
        for k in a:
            assert_close_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), path  # perplexities amplify float noise
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def without_noise_masks(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """GradientMask states without the masks of tensors whose running importance is float noise in both runs.

    A key projection's bias cannot change attention (softmax ignores a shift), so its exact gradient is 0 and
    its importance is rounding noise (~1e-17 against a normalised peak of 1). Its top-k is then decided by the
    reduction order, which differs between FSDP's reduce-scatter and DDP's all-reduce; such a mask says nothing
    either way. Every other mask must be identical."""
    if "masks" not in a or not a.get("running"):
        return a, b
    noise = {n for n in a["running"] if max(float(a["running"][n].float().abs().max()),
                                              float(b["running"][n].float().abs().max())) < 1e-12}
    for n in noise:
        torch.testing.assert_close(a["running"][n], b["running"][n], atol=1e-12, rtol=0)

    def strip(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "masks": {n: m for n, m in state["masks"].items() if n not in noise},
                "running": {n: r for n, r in state["running"].items() if n not in noise}}

    return strip(a), strip(b)


# importance checked to this share of each tensor's largest entry, and at least to this absolute noise floor
ILL_CONDITIONED = {"si": (1e-4, 1e-9), "mas": (1e-5, 1e-7)}


def without_ill_conditioned(a: dict[str, Any], b: dict[str, Any], scenario: str
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Callback states without SI's and MAS's importance, checked here to a share of each tensor's largest entry.

    SI's ``Ω = ω / (Δθ² + ξ)`` divides sums of products of tiny per-step changes, then normalises to mean 1
    (entries up to ~2,000). The rounding differences between FSDP's reduce-scatter and DDP's all-reduce (the
    weights agree to ~5e-8) then reach ~1e-5 of the tensor's scale. MAS's ``|g|`` of a rarely seen token's
    embedding row is a sum of cancelling terms: on an AMD EPYC CPU 30 of the tiny model's 977k embedding entries
    (~0.02, against a largest entry of ~2,460) differed by up to 8e-4 of their value, ~7e-9 of the tensor's scale,
    with the code of stop 12 as well as now. Key biases, whose exact gradient is 0, hold noise (SI: ~1e-12,
    checked to 1e-9; MAS: ~2e-8, checked to 1e-7). A wrong shard would be off by its own size."""
    if scenario not in ILL_CONDITIONED:
        return a, b
    for n, ref in b["importance"].items():
        scale = float(ref.abs().max())
        share, floor = ILL_CONDITIONED[scenario]
        torch.testing.assert_close(a["importance"][n], ref, atol=max(share * scale, floor), rtol=0,
                                   msg=f"{scenario} importance {n}")
    return {**a, "importance": {}}, {**b, "importance": {}}


@pytest.mark.ddp
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fsdp_matches_ddp_with_half_the_parameters_per_rank(
        scenario: str, sharded_runs: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = sharded_runs
    rank0 = _load(out / scenario / "fsdp-rank0.pt", proc)
    rank1 = _load(out / scenario / "fsdp-rank1.pt", proc)
    ddp = _load(out / scenario / "ddp-rank0.pt", proc)
    assert rank0["held"] + rank1["held"] == rank0["total"] and rank0["held"] < rank0["total"]  # really split
    assert ddp["held"] == ddp["total"]
    assert_close_tree(rank0["module"], rank1["module"], "gathered weights, rank 0 vs 1")
    assert_close_tree(rank0["module"], ddp["module"], "weights, FSDP vs DDP")
    assert_close_tree(*without_ill_conditioned(*without_noise_masks(rank0["callback"], ddp["callback"]), scenario),
                      "callback state, FSDP vs DDP")
    for metric, matrix in ddp["results"].items():
        assert_close_tree(rank0["results"][metric]["matrix"], matrix["matrix"], metric)
    # GradientMask's magnitude thresholds: every rank's are the full gradients' (from the gathered sample), not
    # its shard's; a masked step moves weights by ~lr, which the weight tolerance alone could miss
    assert len(ddp["thresholds"]) == (12 if scenario.startswith("gmask_magnitude") else 0)
    for rank in (rank0, rank1):
        torch.testing.assert_close(torch.tensor(rank["thresholds"]), torch.tensor(ddp["thresholds"]), rtol=1e-4,
                                   atol=1e-12)
    if scenario.startswith("ema"):  # the validation swap under FSDP2 serves the swapped-in weights, as under DDP
        swap = rank0["swap"]
        assert not torch.allclose(swap["perturbed"], swap["before"], atol=1e-3)
        torch.testing.assert_close(swap["swapped"], swap["before"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(swap["back"], swap["perturbed"], atol=1e-5, rtol=1e-5)
        assert_close_tree(swap, ddp["swap"], "swap probe logits, FSDP vs DDP")
    # the stream checkpoint holds full tensors, like DDP's
    fsdp_ckpt = torch.load(out / scenario / "fsdp" / "stream.pt", weights_only=True)
    ddp_ckpt = torch.load(out / scenario / "ddp" / "stream.pt", weights_only=True)
    assert_close_tree(fsdp_ckpt["module"], ddp_ckpt["module"], "stream.pt module")
    assert set(fsdp_ckpt["callbacks"]) == set(ddp_ckpt["callbacks"])
    for key in ddp_ckpt["callbacks"]:
        state = without_noise_masks(fsdp_ckpt["callbacks"][key], ddp_ckpt["callbacks"][key])
        assert_close_tree(*without_ill_conditioned(*state, scenario), f"stream.pt callbacks.{key}")


@pytest.mark.ddp
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
@pytest.mark.parametrize("scenario", RESUMED)
def test_resumed_multi_process_run_ends_where_the_uninterrupted_one_does(
        scenario: str, strategy: str, sharded_runs: tuple[Path, subprocess.CompletedProcess]) -> None:
    # resume_naive trains a BERT with dropout: the ranks draw different masks, so every rank's RNG state must
    # travel with the checkpoint (rank 0's alone made rank 1 diverge after a resume)
    out, proc = sharded_runs
    for rank in (0, 1):
        ref = _load(out / scenario / f"{strategy}-rank{rank}.pt", proc)
        resumed = _load(out / scenario / "crash" / f"{strategy}-resumed-rank{rank}.pt", proc)
        assert resumed["timing"]["stages"][1]["resumed_mid_task"] is True
        assert_close_tree(ref["module"], resumed["module"], f"rank {rank} weights")
        assert_close_tree(ref["callback"], resumed["callback"], f"rank {rank} callback")
        assert_close_tree(ref["results"], resumed["results"], f"rank {rank} results")


def test_callbacks_without_sharded_support_are_refused_in_setup() -> None:
    module = fake_module()
    with pytest.raises(ClightConfigError, match="AGEM.*ModelParallelStrategy.*full gradient"):
        AGEM().setup(SimpleNamespace(strategy=ModelParallelStrategy()), module, "fit")
    with pytest.raises(ClightConfigError, match="not tested under `FSDPStrategy`.*ModelParallelStrategy"):
        L2Anchor().setup(SimpleNamespace(strategy=FSDPStrategy()), module, "fit")
    L2Anchor().setup(SimpleNamespace(strategy=ModelParallelStrategy()), module, "fit")  # supported


def test_a_sharded_teacher_is_not_offloaded() -> None:
    module = fake_module()
    with pytest.raises(ClightConfigError, match="teacher_device: cpu.*ModelParallelStrategy.*teacher_device: same"):
        Distillation(teacher_device="cpu").setup(SimpleNamespace(strategy=ModelParallelStrategy()), module, "fit")


def test_replay_under_fsdp_needs_a_memory_row_per_rank() -> None:
    module = fake_module()
    data = SimpleNamespace(train_examples=[], collate=lambda rows: rows)
    trainer = SimpleNamespace(strategy=ModelParallelStrategy(), world_size=4, datamodule=data)
    with pytest.raises(ClightConfigError, match="`memory_size`: 2 examples for 4 ranks.*>= 4"):
        Replay(memory_size=2).setup(trainer, module, "fit")


def test_tensor_parallel_and_peft_are_refused_with_the_way_out() -> None:
    class Mesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name: str) -> Any:
            return SimpleNamespace(size=lambda: 2)

    module = tiny_module("classification")
    module.configure_stream(num_classes=4)
    with pytest.raises(ClightConfigError, match="tensor_parallel_size=2.*tensor_parallel_size: 1"):
        shard_module(module, Mesh())
    peft = tiny_module("classification", peft={"r": 2, "target_modules": ["query"]})
    peft.configure_stream(num_classes=4)
    with pytest.raises(ClightConfigError, match="model.peft.*ddp"):
        shard_module(peft, SimpleNamespace(mesh_dim_names=("data_parallel",)))


def test_transformer_blocks_are_the_repeated_layers() -> None:
    bert, llama = tiny_module("classification"), tiny_module("causal_lm")
    bert.configure_stream(num_classes=4)
    llama.configure_stream(vocab_size=384)
    assert [type(b).__name__ for b in transformer_blocks(bert.backbone)] == ["BertLayer", "BertLayer"]
    assert [type(b).__name__ for b in transformer_blocks(llama.backbone)] == ["LlamaDecoderLayer"] * 2


def test_gather_full_leaves_plain_state_alone() -> None:
    state = {"a": torch.ones(2), "b": [1, {"c": torch.zeros(1)}], "d": "x"}
    out = gather_full(state)
    assert out["d"] == "x" and out["b"][0] == 1 and torch.equal(out["a"], state["a"])
