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


def reshard_all(module: nn.Module) -> None:
    """Drop the gathered weights of every FSDP2 unit in ``module`` (a no-op for plain modules), so that its
    parameters are the sharded DTensors again. A root unit keeps its gathered weights after forward, and values
    copied into the shards would not reach a unit that is still gathered. Not between a forward and its
    backward, except around a no-grad forward: the backward gathers again what it needs."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()


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


def _row_spans(param: DTensor) -> list[tuple[int, int]]:
    """Every rank's rows ``[lo, hi)`` of ``param``'s dim 0: FSDP2 shards it in ``torch.chunk`` pieces."""
    from torch.distributed.tensor import Shard

    if tuple(param.placements) != (Shard(0),):
        raise NotImplementedError(f"only dim-0 sharding (FSDP2's) is supported, found {param.placements}")
    rows, world = param.shape[0], param.device_mesh.size()
    chunk = -(-rows // world)
    return [(min(r * chunk, rows), min((r + 1) * chunk, rows)) for r in range(world)]


def row_shards(param: Tensor) -> list[tuple[int, int]]:
    """Every rank's shard of ``param`` as ``(flat offset, entries)`` in the full tensor's flat order: each rank
    holds whole rows of dim 0, so one contiguous run of the flattened tensor (a plain tensor is one piece)."""
    if not isinstance(param, DTensor):
        return [(0, param.numel())]
    per_row = param.numel() // param.shape[0] if param.shape[0] else 0
    return [(lo * per_row, (hi - lo) * per_row) for lo, hi in _row_spans(param)]


def row_range(param: Tensor) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of dim 0 this rank's shard of ``param`` holds (all of them for a plain tensor)."""
    if not isinstance(param, DTensor):
        return 0, param.shape[0]
    return _row_spans(param)[shard_rank(param)]


def shard_rank(param: Tensor) -> int:
    """This rank's index among the ranks ``param`` is sharded over (0 for a plain tensor)."""
    return param.device_mesh.get_local_rank() if isinstance(param, DTensor) else 0


def local_rows(full: Tensor, param: Tensor) -> Tensor:
    """This rank's part of ``full`` (a tensor of ``param``'s shape, the same on every rank): the rows ``param``'s
    shard holds, shaped like it; ``full`` itself for a plain parameter. No communication."""
    if not isinstance(param, DTensor):
        return full
    offset, n = row_shards(param)[shard_rank(param)]
    return full.reshape(-1)[offset:offset + n].view(param.to_local().shape)


def gather_pieces(pieces: list[Tensor], counts: list[list[int]], group: Any) -> list[Tensor]:
    """All ranks' ``pieces`` (1-D, one per tensor, rank ``r`` holding ``counts[r][i]`` entries of piece ``i``),
    concatenated per tensor in rank order, as float32, on every rank: one padded ``all_gather``."""
    import torch
    import torch.distributed as dist

    world = len(counts)
    totals = [sum(c) for c in counts]
    mine = torch.cat([p.reshape(-1).float() for p in pieces])
    buffer = torch.nn.functional.pad(mine, (0, max(totals) - mine.numel()))
    out = [torch.empty_like(buffer) for _ in range(world)]
    dist.all_gather(out, buffer, group=group)
    split = [out[r][:totals[r]].split(counts[r]) for r in range(world)]
    return [torch.cat([split[r][i] for r in range(world)]) for i in range(len(pieces))]


def like_param(t: Tensor, param: Tensor) -> Tensor:
    """``t`` (a full tensor, e.g. loaded from a checkpoint) laid out like ``param``: sharded the same way when
    ``param`` is a DTensor (a collective), else moved to its device. A tensor already laid out is returned as is."""
    if isinstance(param, DTensor):
        if isinstance(t, DTensor):
            return t
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(t.to(param.device), param.device_mesh, param.placements)
    return t if t.device == param.device else t.to(param.device)
