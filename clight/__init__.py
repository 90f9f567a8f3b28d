"""clight: continual fine-tuning of pretrained models on PyTorch Lightning.

The names below are imported on first use, so that ``import clight`` (and the ``clight`` command) stays cheap and
the command can set its defaults (``HF_HUB_OFFLINE``) before any Hugging Face library is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClightConfigError": "clight.errors",
    "ContinualCallback": "clight.callback",
    "add_loss_terms": "clight.callback",
    "current_task": "clight.callback",
    "ContinualModule": "clight.module",
    "StreamOptions": "clight.runner",
    "StreamRunner": "clight.runner",
    "StreamState": "clight.state",
    "Task": "clight.task",
    "TaskInfo": "clight.task",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clight' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
