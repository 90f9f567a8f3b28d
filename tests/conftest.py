"""Shared pytest setup: offline hub, quiet logs, and tests/ (`clight_testing`) and tests/callbacks (the contract
harness: `case`, `cases`, `probe`) on sys.path, for the test files of every family folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent / "callbacks")]  # clight_testing; the harness
