"""Building a task head's ``transformers`` backbone: from a folder of pretrained weights, or from a config."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clight.errors import ClightConfigError
from clight.hub import check_model_type


def load_pretrained(auto_class: str, folder: str | Path, *, attn_implementation: str | None) -> Any:
    """``transformers.<auto_class>.from_pretrained(folder)``, or one line naming the folder and what is wrong."""
    import transformers

    auto = getattr(transformers, auto_class)
    try:
        return auto.from_pretrained(folder, attn_implementation=attn_implementation)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, SafetensorError, ...
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ClightConfigError(
            f"`model`: cannot load the model in {str(folder)!r} ({type(err).__name__}: {reason}). "
            "Check the folder: config.json and complete weight files, as `save_pretrained` writes them."
        ) from err


def hf_config(config: Mapping[str, Any] | None, vocab_size: int | None = None) -> Any:
    """The ``transformers`` config that a ``config:`` mapping describes (``vocab_size`` filled in if it has none)."""
    from transformers import AutoConfig

    cfg = dict(config or {})
    if vocab_size is not None:
        cfg.setdefault("vocab_size", vocab_size)
    model_type = cfg.pop("model_type")
    check_model_type(model_type, where="`config.model_type`")
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError) as err:
        raise ClightConfigError(f"`config`: {' '.join(str(err).split())[:300]}") from err


def from_config(auto_class: str, config: Any, *, attn_implementation: str | None) -> Any:
    """A randomly initialised ``transformers.<auto_class>`` of ``config``."""
    import transformers

    config._attn_implementation = attn_implementation
    return getattr(transformers, auto_class).from_config(config)
