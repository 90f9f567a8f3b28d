"""The callback contract table: every continual-learning callback joins it.

Each :class:`Case` names a callback class, constructor kwargs for a short run, the stream kind it runs on, and
bad kwargs that must be rejected in ``__init__`` (with the argument's name in the message). The contract tests in
``test_contract.py`` run every case through: constructor validation, ``state_dict`` round-trip through
``torch.save``/``torch.load(weights_only=True)``, crash-and-resume equivalence, and identical state on both ranks
of a 2-process CPU DDP run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probe import ProbeCallback


@dataclass
class Case:
    id: str
    cls: type
    kwargs: dict[str, Any]
    bad_kwargs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    kind: str = "classification"  # or "causal_lm"


CASES: list[Case] = [
    Case("probe", ProbeCallback, {"scale": 2.0}, bad_kwargs=[({"scale": 0.0}, "scale")]),
]


def case_by_id(case_id: str) -> Case:
    for case in CASES:
        if case.id == case_id:
            return case
    raise KeyError(case_id)
