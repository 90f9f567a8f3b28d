"""Contract-harness rows for the regularization callbacks."""

from __future__ import annotations

from case import Case

REGULARIZATION_CASES: list[Case] = []
