"""Contract-harness rows for the peft callbacks."""

from __future__ import annotations

from case import Case

PEFT_CASES: list[Case] = []
