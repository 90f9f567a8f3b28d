"""Contract-harness rows for the masking callbacks."""

from __future__ import annotations

from case import Case

MASKING_CASES: list[Case] = []
