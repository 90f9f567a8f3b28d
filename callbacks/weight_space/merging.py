"""TaskVectorMerge: keep every task's task vector and merge them at each task end (task arithmetic, TIES, DARE,
MagMax, Model Breadcrumbs, Model Stock)."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from clight.callback import stream_seed
from clight.callbacks._utils import check_arg, seeded_generator, trainable_parameters
from clight.callbacks.weight_space.base import WeightSpaceCallback, cpu_state, load_weights_, snapshot
from clight.functional.merging import (
    MERGE_METHODS,
    MergeMethod,
    add_task_vector,
    breadcrumbs_mask,
    combine_magmax,
    combine_model_stock,
    combine_sum,
    combine_ties,
    dare_drop,
    task_vector,
    trim_magnitude,
)
from clight.task import TaskInfo

SPARSE_METHODS = ("ties", "dare", "breadcrumbs")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pack(t: Tensor, dtype: torch.dtype, sparse: bool) -> dict[str, Any]:
    """A compact CPU form of one task-vector tensor: dense in ``dtype``, or its non-zero entries (``index``,
    ``value``) when ``sparse``."""
    t = t.detach()
    if not sparse:
        return {"dense": t.to("cpu", dtype=dtype, copy=True)}
    flat = t.reshape(-1)
    index = flat.nonzero().squeeze(1)
    index_dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    return {"index": index.to("cpu", dtype=index_dtype), "value": flat[index].to("cpu", dtype=dtype),
            "shape": list(t.shape)}


def unpack(packed: dict[str, Any], device: torch.device | str = "cpu") -> Tensor:
    """The float32 tensor of :func:`pack`'s output, on ``device``."""
    if "dense" in packed:
        return packed["dense"].to(device=device, dtype=torch.float32)
    shape = packed["shape"]
    flat = torch.zeros(int(torch.tensor(shape).prod()) if shape else 1, dtype=torch.float32, device=device)
    flat[packed["index"].to(device=device, dtype=torch.long)] = packed["value"].to(device=device, dtype=torch.float32)
    return flat.view(shape)


class TaskVectorMerge(WeightSpaceCallback):
    """Keep each task's task vector and, at every task end, set the weights to the merge of all of them so far.

    At the end of task ``t`` the task vector ``τ_t = θ_t − θ_ref`` is stored, with ``θ_ref`` the pretrained
    weights (``task_vector: from_pretrained``, MagMax's choice: each ``τ_t`` holds everything learned up to task
    ``t``) or the weights at the task's start (``from_task_start``: each ``τ_t`` holds that task's own change).
    Then ``θ ← θ_pre + merge(τ_1, ..., τ_t)`` with ``method`` from :mod:`clight.functional.merging`:
    ``task_arithmetic`` (``scale · Σ τ``), ``ties`` (trim to ``density``, elect signs, disjoint mean),
    ``dare`` (drop ``drop_rate``, rescale, sum; the drop of task ``t`` is seeded from ``(seed, t)``),
    ``magmax`` (per entry the value of largest magnitude), ``breadcrumbs`` (mask the ``bottom``/``top``
    fractions by magnitude, sum) or ``model_stock`` (per layer ``t(cos) · mean τ``, ``t`` from the mean
    pairwise angle between the task vectors; over a stream the "fine-tuned models" are the task-end models
    ``θ_pre + τ_i``, and with one task ``t = 1``: the merge is the fine-tuned model itself).

    ``continue_from: finetuned`` (MagMax's sequential fine-tuning) trains the next task from the fine-tuned
    weights ``θ_t`` and uses the merged model only for evaluation and as the stream checkpoint's weights (the
    fine-tuned weights are kept in the state between tasks); ``merged`` trains the next task from the merge.
    The classification head is merged elementwise like every weight: the rows of a task's new classes move
    mainly in that task's vector.

    Storage: the pretrained weights (exact), plus one vector per task in ``storage_dtype``; the methods that
    sparsify each vector on its own (``ties``, ``dare``, ``breadcrumbs``) sparsify it at its task end and store
    only its non-zero entries with their indices. The state is CPU tensors. Parameters are identical on every
    DDP rank and DARE's drop is seeded, so every rank merges identically. Sharded strategies are refused.

    Args:
        method: ``task_arithmetic``, ``ties``, ``dare``, ``magmax``, ``breadcrumbs`` or ``model_stock``.
        scale: ``λ``, the factor of the merged task vector (not used by ``model_stock``).
        density: the fraction of each tensor's entries TIES keeps, in ``(0, 1]``.
        drop_rate: DARE's drop probability ``p``, in ``[0, 1)``.
        bottom: the fraction of smallest-magnitude entries Breadcrumbs masks.
        top: the fraction of largest-magnitude entries Breadcrumbs masks.
        task_vector: ``from_pretrained`` or ``from_task_start``: what a task vector is measured from.
        continue_from: ``finetuned`` or ``merged``: the weights the next task trains from.
        storage_dtype: ``float32``, ``bfloat16`` or ``float16``: how the task vectors are stored.
        seed: seed of DARE's drop; empty: the datamodule's ``seed``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.TaskVectorMerge
              init_args: {method: magmax, scale: 0.5, continue_from: finetuned}
    """

    def __init__(
        self,
        *,
        method: MergeMethod = "task_arithmetic",
        scale: float = 1.0,
        density: float = 0.2,
        drop_rate: float = 0.5,
        bottom: float = 0.85,
        top: float = 0.01,
        task_vector: Literal["from_pretrained", "from_task_start"] = "from_pretrained",
        continue_from: Literal["finetuned", "merged"] = "finetuned",
        storage_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        fix = "See the callback's docstring for the accepted values."
        number = (int, float)
        check_arg(method in MERGE_METHODS, "method", f"one of {list(MERGE_METHODS)}", method, fix)
        check_arg(isinstance(scale, number) and scale > 0, "scale", "a number > 0", scale,
                  "E.g. `scale: 1.0` adds the merged task vector in full, 0.5 half of it.")
        check_arg(isinstance(density, number) and 0.0 < density <= 1.0, "density", "a number in (0, 1]", density,
                  "E.g. `density: 0.2` keeps the top 20% of each tensor's entries (TIES).")
        check_arg(isinstance(drop_rate, number) and 0.0 <= drop_rate < 1.0, "drop_rate", "a number in [0, 1)",
                  drop_rate, "E.g. `drop_rate: 0.5` drops half of each task vector's entries (DARE).")
        check_arg(isinstance(bottom, number) and 0.0 <= bottom < 1.0, "bottom", "a number in [0, 1)", bottom, fix)
        check_arg(isinstance(top, number) and 0.0 <= top < 1.0 and bottom + top < 1.0, "top",
                  "a number in [0, 1) with `bottom + top < 1`", top, "E.g. `bottom: 0.85, top: 0.01`.")
        check_arg(task_vector in ("from_pretrained", "from_task_start"), "task_vector",
                  "`from_pretrained` or `from_task_start`", task_vector, fix)
        check_arg(continue_from in ("finetuned", "merged"), "continue_from", "`finetuned` or `merged`",
                  continue_from, "`finetuned` is MagMax's sequential fine-tuning; `merged` trains on from the merge.")
        check_arg(storage_dtype in _DTYPES, "storage_dtype", f"one of {list(_DTYPES)}", storage_dtype, fix)
        check_arg(seed is None or (isinstance(seed, int) and seed >= 0), "seed", "empty or an integer >= 0", seed,
                  "Leave it empty to use the datamodule's seed.")
        self.method, self.scale, self.density, self.drop_rate = method, float(scale), float(density), float(drop_rate)
        self.bottom, self.top, self.task_vector, self.continue_from = float(bottom), float(top), task_vector, continue_from
        self.storage_dtype, self.seed = storage_dtype, seed
        self.pretrained: dict[str, Tensor] | None = None
        self.task_start: dict[str, Tensor] | None = None
        self.finetuned: dict[str, Tensor] | None = None
        self.vectors: list[dict[str, dict[str, Any]]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, task_vector=self.task_vector)

    # ---- task boundaries ---------------------------------------------------------------------------------
    def begin_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.finetuned is not None:  # continue_from: finetuned — the module holds the merge since the last end
            load_weights_(pl_module, self.finetuned)
            self.finetuned = None
        params = trainable_parameters(pl_module)
        self.pretrained = self.pretrained or {}
        self.pretrained.update(snapshot({k: p for k, p in params.items() if k not in self.pretrained}))
        if self.task_vector == "from_task_start":
            self.task_start = snapshot(params)

    @torch.no_grad()
    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        params = trainable_parameters(pl_module)
        names = [k for k in self.pretrained or {} if k in params]
        current = {k: params[k].detach() for k in names}
        reference = self.pretrained if self.task_vector == "from_pretrained" else self.task_start
        tau = task_vector(current, reference)
        if self.method == "ties":
            tau = trim_magnitude(tau, self.density)
        elif self.method == "dare":
            tau = dare_drop(tau, self.drop_rate, seeded_generator(stream_seed(trainer, self.seed), task.index, 0xDA7E))
        elif self.method == "breadcrumbs":
            tau = breadcrumbs_mask(tau, self.bottom, self.top)
        dtype, sparse = _DTYPES[self.storage_dtype], self.method in SPARSE_METHODS
        self.vectors.append({k: pack(v, dtype, sparse) for k, v in tau.items()})
        if self.continue_from == "finetuned":
            self.finetuned = snapshot(current)
        load_weights_(pl_module, self.merged(device=pl_module.device))
        self.task_start = None

    def merged(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """``θ_pre + merge(τ_1, ..., τ_t)`` over the stored task vectors."""
        names = [k for k in self.vectors[-1] if k in (self.pretrained or {})]
        # a parameter that started training after task i has a zero task vector in task i
        vectors = [{k: unpack(v[k], device) if k in v else torch.zeros(self.pretrained[k].shape, device=device)
                    for k in names} for v in self.vectors]
        if self.method in ("task_arithmetic", "dare", "breadcrumbs"):
            delta = combine_sum(vectors, self.scale)
        elif self.method == "ties":
            delta = combine_ties(vectors, self.scale)
        elif self.method == "magmax":
            delta = combine_magmax(vectors, self.scale)
        else:
            delta = combine_model_stock(vectors)
        return add_task_vector({k: self.pretrained[k].to(device) for k in names}, delta)

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pretrained": cpu_state(self.pretrained),
                "task_start": cpu_state(self.task_start), "finetuned": cpu_state(self.finetuned),
                "vectors": [{k: dict(v) for k, v in vec.items()} for vec in self.vectors]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for name in ("pretrained", "task_start", "finetuned"):
            setattr(self, name, None if state_dict[name] is None else dict(state_dict[name]))
        self.vectors = [{k: dict(v) for k, v in vec.items()} for vec in state_dict["vectors"]]
