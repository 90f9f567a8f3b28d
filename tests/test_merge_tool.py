"""clight merge: Hugging Face folders and clight run checkpoints merged against a base, checked by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
from clight.commands import merge as merge_tool  # noqa: E402

D1 = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0, 0.0, 0.0, 0.0])
D2 = torch.tensor([-3.0, 1.0, 1.0, -0.25, 0.0, 0.0, 0.0, 0.0])
BIAS = "embeddings.LayerNorm.bias"


def _tiny(tmp: Path) -> tuple[Path, Path, Path]:
    """A tiny BERT saved as the base, and two copies whose LayerNorm bias moved by D1 and D2."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                 vocab_size=20, max_position_embeddings=16), add_pooling_layer=False)
    model.save_pretrained(tmp / "base")
    for name, delta in (("a", D1), ("b", D2)):
        with torch.no_grad():
            model.embeddings.LayerNorm.bias.copy_(delta)  # the base bias is zero
        model.save_pretrained(tmp / name)
    return tmp / "base", tmp / "a", tmp / "b"


def test_hf_folders_magmax_through_the_command_line(tmp_path: Path) -> None:
    base, a, b = _tiny(tmp_path)
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "clight", "merge", "--method", "magmax", "--scale", "0.5",
                           "--base", str(base), "--out", str(out), str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    merged = AutoModel.from_pretrained(out, add_pooling_layer=False)  # plain transformers loads it
    reference = AutoModel.from_pretrained(base, add_pooling_layer=False)
    # per entry the larger magnitude of D1, D2: [-3, -2, 3, 0.5, 0, ...], times 0.5
    expected = torch.tensor([-1.5, -1.0, 1.5, 0.25, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(merged.embeddings.LayerNorm.bias.detach(), expected)
    for (name, p), (_, q) in zip(merged.named_parameters(), reference.named_parameters()):
        if name != BIAS:
            assert torch.equal(p, q), name  # equal task vectors of zero: the base


def test_run_checkpoints_ties_into_a_stream_file_and_an_hf_folder(tmp_path: Path) -> None:
    base, a, b = _tiny(tmp_path)
    base_weights = merge_tool.load(str(base)).weights
    for name, delta, head in (("run_a", D1, 2.0), ("run_b", D2, 4.0)):
        module = {f"backbone.{k}": v.clone() for k, v in base_weights.items()}
        module[f"backbone.{BIAS}"] = delta.clone()
        module["head.weight"] = torch.full((3, 8), head)
        (tmp_path / name).mkdir()
        torch.save({"module": module, "completed": 2}, tmp_path / name / "stream.pt")
    runs = [str(tmp_path / "run_a"), str(tmp_path / "run_b")]
    merge_tool.main(["--method", "ties", "--density", "0.25", "--base", str(base), "--out",
                     str(tmp_path / "merged.pt"), *runs])
    payload = torch.load(tmp_path / "merged.pt", weights_only=True)
    # density 0.25 of 8 entries keeps 2 per vector: D1 -> [0, -2, 3, 0, ...]; D2 -> [-3, 1, 1, 0, ...] (the two
    # |1| tie at the 2nd place and are both kept); elected signs of the sum [-3, -1, 4, 0, ...]: [-, -, +, +, ...];
    # disjoint means: -3, -2, (3 + 1) / 2, 0, ...
    expected = torch.tensor([-3.0, -2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert torch.equal(payload["module"][f"backbone.{BIAS}"], expected)
    assert torch.equal(payload["module"]["head.weight"], torch.full((3, 8), 3.0))  # no base: the average
    assert payload["completed"] == 2  # the rest of the first run's checkpoint is kept
    merge_tool.main(["--method", "ties", "--density", "0.25", "--base", str(base), "--out",
                     str(tmp_path / "merged_hf"), *runs])
    merged = AutoModel.from_pretrained(tmp_path / "merged_hf", add_pooling_layer=False)
    assert torch.equal(merged.embeddings.LayerNorm.bias.detach(), expected)


def test_base_is_required_for_full_models(tmp_path: Path) -> None:
    base, a, b = _tiny(tmp_path)
    with pytest.raises(SystemExit) as err:
        merge_tool.main(["--out", str(tmp_path / "x"), str(a), str(b)])
    assert err.value.code == 2
