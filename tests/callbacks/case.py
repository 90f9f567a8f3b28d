"""One row of the callback contract table (see `cases.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    id: str
    cls: type
    kwargs: dict[str, Any]
    bad_kwargs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    kind: str = "classification"  # or "causal_lm"
    module_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"peft": {...}} for adapter cases
    stream_kwargs: dict[str, Any] = field(default_factory=dict)
