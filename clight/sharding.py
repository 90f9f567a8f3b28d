"""Sharded training of a :class:`~clight.module.ContinualModule` with FSDP2 (``fully_shard``).

Under Lightning's ``ModelParallelStrategy`` the module's ``configure_model`` calls :func:`shard_module`: every
transformer block of the backbone, then the backbone and the classification head, become ``fully_shard`` units
over the strategy's data-parallel mesh, so each rank holds ``1/world`` of every parameter (a ``DTensor`` sharded
on dim 0) and the blocks are all-gathered one at a time in forward and backward. Why FSDP2 and not Lightning's
``FSDPStrategy``: FSDP1 refuses a CPU-only machine, FSDP2 runs on CPU ranks with gloo, so the sharded path is tested
on every CI run (2 CPU processes), not only where a GPU is lent; on GPUs it is PyTorch's recommended FSDP.

The stream runner starts a fresh Trainer per task; the sharding is applied once, in the first task's
``configure_model`` (after the callbacks' ``setup``: ``requires_grad`` set there carries over to the sharded
parameters), and kept: a module that is already sharded is left as it is, so from then on the parameters are the
same ``DTensor`` objects in every task.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from clight.errors import ClightConfigError
from clight.hub import transformer_blocks


def is_dtensor(t: Any) -> bool:
    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's shard of ``t`` (``t`` itself when it is a plain tensor)."""
    return t.to_local() if isinstance(t, DTensor) else t


def is_sharded_module(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def shard_module(module: nn.Module, mesh: Any) -> bool:
    """Apply ``fully_shard`` to the blocks, the backbone and the head of ``module`` (a
    :class:`~clight.module.ContinualModule`) over the data-parallel dimension of ``mesh``. Returns False (and
    changes nothing) when already sharded. Tensor parallelism and peft adapters are refused with the way out."""
    from torch.distributed.fsdp import fully_shard

    backbone = module.backbone
    if backbone is None:
        raise RuntimeError("call `configure_stream(...)` (the runner does) before sharding the module.")
    if is_sharded_module(backbone):
        return False
    names = mesh.mesh_dim_names or ()
    tp = mesh["tensor_parallel"].size() if "tensor_parallel" in names else 1
    if tp != 1:
        raise ClightConfigError(
            f"`trainer.strategy`: ModelParallelStrategy with tensor_parallel_size={tp}; clight shards the model "
            "with FSDP2 over the data-parallel dimension only. Set `tensor_parallel_size: 1` and "
            "`data_parallel_size` to the number of devices (its `auto` default puts the devices on the "
            "tensor-parallel dimension).")
    if getattr(module, "peft_model", None) is not None:
        raise ClightConfigError(
            "`model.peft`: LoRA adapters are not sharded by clight yet (adding or merging an adapter needs the "
            "whole weight). Train the adapter under `trainer.strategy: ddp`, or drop `model.peft` to shard.")
    if "data_parallel" in names:
        mesh = mesh["data_parallel"]
    for block in transformer_blocks(backbone) or []:
        fully_shard(block, mesh=mesh)
    fully_shard(backbone, mesh=mesh)
    head = getattr(module, "head", None)
    if head is not None and any(True for _ in head.parameters()):
        fully_shard(head, mesh=mesh)
    return True


def sharded_numel(module: nn.Module) -> tuple[int, int]:
    """(entries this rank holds, entries of the full parameters)."""
    held = sum(local(p).numel() for p in module.parameters())
    full = sum(p.numel() for p in module.parameters())
    return held, full


def gather_full(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every ``DTensor`` gathered into a full CPU tensor. A collective
    when there are DTensors: every rank calls it on the same structure (callback state under FSDP)."""
    if isinstance(obj, DTensor):
        return obj.full_tensor().detach().cpu()
    if isinstance(obj, dict):
        return {k: gather_full(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v) for v in obj)
    return obj


def like_param(t: Tensor, param: Tensor) -> Tensor:
    """``t`` (a full tensor, e.g. loaded from a checkpoint) laid out like ``param``: sharded the same way when
    ``param`` is a DTensor (a collective), else moved to its device. A tensor already laid out is returned as is."""
    if isinstance(param, DTensor):
        if isinstance(t, DTensor):
            return t
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(t.to(param.device), param.device_mesh, param.placements)
    return t if t.device == param.device else t.to(param.device)
