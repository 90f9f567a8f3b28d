"""Tokenizers from local folders (or ``pkg:<package>``); clight never downloads one."""

from __future__ import annotations

from typing import Any

from clight.errors import ClightConfigError
from clight.hub import PKG_PREFIX


def load_tokenizer(spec: str, *, argument: str = "tokenizer") -> Any:
    """Load a tokenizer from a local folder (or ``pkg:<package>``); never from a hub."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if spec.startswith(PKG_PREFIX):
        from clight.hub import resolve_pretrained_path

        path = resolve_pretrained_path(spec, argument=argument)
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ClightConfigError(
                f"`{argument}`: tokenizer folder {str(path)!r} does not exist; pass a local folder written by "
                "`save_pretrained` (clight does not download tokenizers)."
            )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ClightConfigError(f"`{argument}`: {str(path)!r} holds no loadable tokenizer: {err}") from err
