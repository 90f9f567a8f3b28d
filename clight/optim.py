"""The optimizer a module trains with, built once before training so that bad arguments are refused up front."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from clight.errors import ClightConfigError


def check_optimizer(
    factory: Callable[..., torch.optim.Optimizer] | None, params: Sequence[torch.nn.Parameter]
) -> torch.optim.Optimizer | None:
    """Build ``factory(params)`` (AdamW at lr 5e-5 when there is none) and refuse, in one line, arguments the
    optimizer rejects or a learning rate <= 0, which torch accepts at 0. Returns the optimizer, or None when there
    is nothing to train or it can only be built on the training device (the trainer builds it there)."""
    if not params:
        return None
    if factory is None:
        return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    try:
        optimizer = factory(params)
    except (ValueError, TypeError) as err:
        raise ClightConfigError(
            f"`model.optimizer`: the optimizer refuses its arguments ({' '.join(str(err).split())[:200]}); fix "
            "`model.optimizer.init_args`."
        ) from err
    except Exception:  # e.g. an optimizer that needs its parameters on the GPU
        return None
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, (int, float, Tensor)) and not float(lr) > 0:
            raise ClightConfigError(
                f"`model.optimizer.init_args.lr` must be > 0, got {float(lr)}: the weights would not move (or move "
                "uphill). Give a positive learning rate, e.g. `--model.optimizer.init_args.lr 5e-5`."
            )
    return optimizer
