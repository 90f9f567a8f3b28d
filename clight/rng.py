"""Every rank's random state, for exact mid-task resume: saved in Lightning's checkpoint, restored on load."""

from __future__ import annotations

import random
from typing import Any

import torch


def capture_rng_states() -> list[dict[str, Any]]:
    """The torch, Python and CUDA random states of every rank, rank by rank (a collective under DDP/FSDP: call
    it on every rank). Ranks draw different dropout masks, and only rank 0 writes the checkpoint."""
    mine = {
        "torch": torch.get_rng_state(),
        "python": _python_state_to_plain(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        ranks: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
        return ranks
    return [mine]


def restore_rng_state(ranks: list[dict[str, Any]], rank: int) -> None:
    """Restore this rank's state from :func:`capture_rng_states`' list (rank 0's when the list is shorter)."""
    state = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_plain(state["python"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
