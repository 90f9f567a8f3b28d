"""Pure functions for continual-learning evaluation."""

from __future__ import annotations

from clight.functional.metrics import (
    SUMMARY_KEYS,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
    learning_accuracy,
    retention,
    summarize,
)

__all__ = [
    "SUMMARY_KEYS",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forward_transfer",
    "learning_accuracy",
    "retention",
    "summarize",
]
