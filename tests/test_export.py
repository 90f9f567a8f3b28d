"""Export: the written folders load with plain `transformers` / `peft` and give the module's own outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clight_testing import ROOT, TINY_BERT, tiny_module
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

from clight import ContinualModule
from clight.errors import ClightConfigError
from clight.export import export_module

BERT_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
LLAMA_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
BATCH = {"input_ids": torch.tensor([[101, 2054, 2003, 1037, 102, 0], [101, 3899, 102, 0, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])}


def _trained_looking(module: ContinualModule) -> ContinualModule:
    """Give every adapter non-zero B (a fresh adapter is the identity, which would hide a lost adapter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


def _classifier(num_classes: int = 5) -> ContinualModule:
    torch.manual_seed(0)
    module = ContinualModule(config=dict(TINY_BERT), peft=dict(BERT_LORA))
    module.configure_stream(num_classes=num_classes)
    return _trained_looking(module)


def _logits_from_export(encoder: torch.nn.Module, out: Path) -> torch.Tensor:
    """The documented recipe: mean-pooled last hidden state, then the exported linear head."""
    head = load_file(str(out / "head.safetensors"))
    hidden = encoder(**BATCH).last_hidden_state  # (B, T, H)
    mask = BATCH["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)) @ head["weight"].T + head["bias"]


@torch.no_grad()
def test_unmerged_lora_export_loads_with_transformers_and_peft_and_gives_the_same_logits(tmp_path: Path) -> None:
    module = _classifier()
    expected = module(BATCH)["logits"]
    manifest = export_module(module, tmp_path, class_names=list("abcde"))
    assert manifest["adapters"] == {"default": "adapters"} and manifest["classes"] == list("abcde")
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "adapters" / "adapter_model.safetensors").exists()
    base = AutoModel.from_pretrained(tmp_path / "model", add_pooling_layer=False)
    assert not any("lora" in k for k in base.state_dict())  # a plain transformers model
    encoder = PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
    assert torch.allclose(_logits_from_export(encoder, tmp_path), expected, atol=1e-6)
    # without the adapter the logits differ: the test would notice an adapter that did not load
    plain = AutoModel.from_pretrained(tmp_path / "model", add_pooling_layer=False).eval()
    assert not torch.allclose(_logits_from_export(plain, tmp_path), expected, atol=1e-3)


@torch.no_grad()
def test_merged_export_is_a_plain_transformers_model_with_the_same_logits(tmp_path: Path) -> None:
    module = _classifier()
    expected = module(BATCH)["logits"]
    manifest = export_module(module, tmp_path, merge=True)
    assert manifest["merged"] is True and not (tmp_path / "adapters").exists()
    encoder = AutoModel.from_pretrained(tmp_path / "model", add_pooling_layer=False).eval()
    assert torch.allclose(_logits_from_export(encoder, tmp_path), expected, atol=1e-5)


@torch.no_grad()
def test_full_finetuning_export(tmp_path: Path) -> None:
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    module.eval()
    export_module(module, tmp_path, merge=True)  # `merge` means nothing without peft
    encoder = AutoModel.from_pretrained(tmp_path / "model", add_pooling_layer=False).eval()
    assert torch.allclose(_logits_from_export(encoder, tmp_path), module(BATCH)["logits"], atol=1e-6)


@torch.no_grad()
def test_per_task_adapters_export_one_peft_folder_each_and_merge_needs_a_choice(tmp_path: Path) -> None:
    module = _classifier()
    for name in ("task_0", "task_1"):
        module.add_adapter(name)
    _trained_looking(module)
    module.use_adapters(["task_1"])
    module.delete_adapter("default")
    expected_1 = module(BATCH)["logits"]
    module.use_adapters(["task_0"])
    expected_0 = module(BATCH)["logits"]
    assert not torch.allclose(expected_0, expected_1)
    manifest = export_module(module, tmp_path / "all")
    assert manifest["adapters"] == {"task_0": "adapters/task_0", "task_1": "adapters/task_1"}
    base = AutoModel.from_pretrained(tmp_path / "all" / "model", add_pooling_layer=False)
    encoder = PeftModel.from_pretrained(base, tmp_path / "all" / "adapters" / "task_1", adapter_name="task_1").eval()
    assert torch.allclose(_logits_from_export(encoder, tmp_path / "all"), expected_1, atol=1e-6)
    with pytest.raises(ClightConfigError, match="--adapter NAME"):
        export_module(module, tmp_path / "merged", merge=True)
    export_module(module, tmp_path / "merged1", merge=True, adapters=["task_1"])
    merged = AutoModel.from_pretrained(tmp_path / "merged1" / "model", add_pooling_layer=False).eval()
    assert torch.allclose(_logits_from_export(merged, tmp_path / "merged1"), expected_1, atol=1e-5)


@torch.no_grad()
def test_causal_lm_lora_export_gives_the_same_token_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ContinualModule(config=dict(TINY_BERT, model_type="llama", num_key_value_heads=1), task="causal_lm",
                             peft=dict(LLAMA_LORA))
    module.configure_stream(vocab_size=TINY_BERT["vocab_size"])
    _trained_looking(module)
    expected = module(BATCH)["logits"]
    export_module(module, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged" / "head.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "model").eval()
    assert torch.allclose(merged(**BATCH).logits, expected, atol=1e-5)
    export_module(module, tmp_path / "peft")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "peft" / "model")
    adapted = PeftModel.from_pretrained(base, tmp_path / "peft" / "adapters").eval()
    assert torch.allclose(adapted(**BATCH).logits, expected, atol=1e-6)


def test_export_tool_on_a_cli_run(tmp_path: Path) -> None:
    """`clight fit` with LoRA, then `clight export RUN --out DIR`: the export gives the run's final model."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    run = tmp_path / "run"
    fit = subprocess.run([sys.executable, "-m", "clight", "fit", "-c", str(ROOT / "tests/data/tiny_classification.yaml"),
                          "--stream.run_dir", str(run), "--model.peft", json.dumps(BERT_LORA),
                          "--trainer.enable_progress_bar", "false"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "clight", "export", str(run), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["completed_stages"] == ["wordnet-nature", "wordnet-artifacts"]
    assert manifest["classes"][:2] == ["noun.animal", "noun.plant"]
    # the exported adapter and head are the run's last checkpoint's, bit for bit
    saved = torch.load(run / "stream.pt", weights_only=True)["module"]
    head = load_file(str(out / "head.safetensors"))
    assert torch.equal(head["weight"], saved["head.linear.weight"])
    adapter = load_file(str(out / "adapters" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"
    assert torch.equal(adapter[key], saved["backbone.base_model.model.encoder.layer.1.attention.self.value.lora_B."
                                            "default.weight"])
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "model")("a dog")["input_ids"][0] == 101
    bad = subprocess.run([sys.executable, "-m", "clight", "export", str(tmp_path / "nope"), "--out",
                          str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_classification_export_loads_in_a_transformers_pipeline_with_clights_logits(tmp_path: Path) -> None:
    from clight_testing import run_stream, tiny_stream

    from clight.export import export_module

    _, module = run_stream(tmp_path / "run", [], max_steps=2)
    data = tiny_stream()
    data.prepare_stream()
    manifest = export_module(module, tmp_path / "out", tokenizer=data.tokenizer, class_names=data.classes)
    assert manifest["classifier"] == "classifier"
    texts = ["dog: a domestic animal", "hammer: a hand tool with a heavy head"]
    enc = data.tokenizer(texts, padding=True, return_tensors="pt")
    module.eval()
    with torch.no_grad():
        ours = module({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})["logits"]
    code = ("import json, sys; from transformers import pipeline; "
            "clf = pipeline('text-classification', model=sys.argv[1], trust_remote_code=True); "
            "print(json.dumps(clf(sys.argv[2:], top_k=None, function_to_apply='none')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out" / "classifier"), *texts],
                          cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = json.loads(proc.stdout.strip().splitlines()[-1])
    for row, logits in zip(scored, ours):
        by_label = {entry["label"]: entry["score"] for entry in row}
        assert list(by_label) and set(by_label) == set(data.classes)  # id2label names the classes
        theirs = torch.tensor([by_label[name] for name in data.classes])
        torch.testing.assert_close(theirs, logits, atol=1e-5, rtol=1e-5)
