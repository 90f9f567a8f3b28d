"""The base of the quadratic-penalty callbacks (EWC, online EWC, MAS, SI, L2Anchor): an importance ``Ω`` and an
anchor ``θ*`` per trainable parameter, and the penalty ``λ/2 · Σ Ω (θ − θ*)²`` applied as a closed-form gradient.

Why a closed-form gradient and not a loss term: ``tools/bench/penalty_speed.py`` times both on the real MiniLM's
parameters. Adding ``λ Ω (θ − θ*)`` to the accumulated gradient in ``on_before_optimizer_step`` is one ``_foreach``
pass per optimizer step; a loss term builds an autograd graph over every parameter on every micro-batch. Both are
exact under gradient accumulation (the hook runs once per optimizer step) and AMP (Lightning calls the hook after
unscaling; ``bf16`` has no scaler); gradient clipping, applied after the hook, includes the penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import move_data_to_device
from torch import Tensor

from clight.callback import ContinualCallback, logs_this_step, stream_seed
from clight.callbacks._rows import TaskRows, stack_rows
from clight.callbacks._utils import check_arg, eval_mode, seeded_generator, trainable_parameters
from clight.contracts import ExampleStream, optional
from clight.errors import ClightConfigError
from clight.functional.penalties import add_quadratic_penalty_grad_, normalize_importance_
from clight.sharding import gather_full, is_dtensor, like_param, local
from clight.task import TaskInfo

StateDtype = Literal["float32", "param"]
Statistic = Literal["square", "abs"]
# a scalar loss of one micro-batch: (module, batch, outputs, uniforms (B, W) for sampling, or None) -> scalar
MicroBatchLoss = Callable[[pl.LightningModule, dict[str, Tensor], dict[str, Tensor], "Tensor | None"], Tensor]


class QuadraticPenalty(ContinualCallback):
    """Base of the quadratic-penalty family: keeps ``Ω`` and ``θ*`` and adds ``λ Ω (θ − θ*)`` to the gradients.

    Only trainable parameters (``requires_grad``) are tracked, keyed by name. The state is held in fp32 (or
    each parameter's own dtype, ``dtype: param``) on the module's device during training and saved as CPU
    tensors. Subclasses say how ``Ω`` is estimated (:meth:`task_importance`) and how it is consolidated at the
    end of a task (``Ω ← decay · Ω + Ω_task``, the anchor moving to the new weights or to the ``Ω``-weighted
    mean of all anchors). ``train/penalty_<name>`` logs ``λ/2 Σ Ω (θ − θ*)²`` on the trainer's logging steps.
    """

    penalty_name = "penalty"
    uses_importance = True
    estimate_examples = 0  # > 0: the importance is estimated on this many of the task's training examples
    anchor_update: Literal["latest", "weighted_mean"] = "latest"
    sharded_reason = "it has not been shown to work on sharded parameters (EWC, MAS and L2Anchor have)"

    def __init__(self, *, strength: float, dtype: StateDtype = "float32", normalize: bool = True) -> None:
        super().__init__()
        check_arg(isinstance(strength, (int, float)) and not isinstance(strength, bool) and strength > 0,
                  "strength", "a number > 0", strength, "Remove the callback to train without the penalty.")
        check_arg(dtype in ("float32", "param"), "dtype", "`float32` or `param`", dtype,
                  "`float32` keeps the state in fp32 (exact for bf16 weights); `param` halves it for 16-bit models.")
        check_arg(isinstance(normalize, bool), "normalize", "true or false", normalize,
                  "`true` divides each task's importance by its mean so `strength` has a model-independent scale.")
        self.strength, self.dtype, self.normalize = float(strength), dtype, normalize
        self.anchor: dict[str, Tensor] = {}
        self.importance: dict[str, Tensor] = {}
        self.importance_means: list[float] = []  # the raw mean of every task's estimate (before normalising)
        self._tracked: list[tuple[str, torch.nn.Parameter]] = []
        self.batch_rows: TaskRows | None = None  # the estimate's rows, for a datamodule without `train_examples`

    @property
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _state_dtype(self, param: Tensor) -> torch.dtype:
        return torch.float32 if self.dtype == "float32" else param.dtype

    def _snapshot(self) -> dict[str, Tensor]:
        return {n: p.detach().to(self._state_dtype(p), copy=True) for n, p in self._tracked}

    def _to_device(self, device: torch.device) -> None:
        # laid out like the tracked parameter: on its device, and sharded like it under FSDP (state loaded from a
        # checkpoint is full); a name not tracked now (frozen) goes to the device
        params = dict(self._tracked)
        for store in (self.anchor, self.importance):
            for name, t in store.items():
                param = params.get(name)
                store[name] = like_param(t, param) if param is not None else t.to(device)

    def _seed(self, trainer: pl.Trainer) -> int:
        return stream_seed(trainer)

    # ---- Lightning / task hooks ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ClightConfigError(
                f"`{type(self).__name__}` adds its penalty's gradient in automatic optimization; the module uses "
                "manual optimization. Add the penalty to your own loss instead, or remove the callback.")
        name = type(self).__name__
        # without the stream's examples, the estimate runs on rows of the task's own training batches
        if self.estimate_examples and not optional(
                trainer.datamodule, ExampleStream, who=name, role="datamodule",
                fix="Add the missing members, or remove `train_examples` to estimate on rows of the training batches."):
            self.batch_rows = self.batch_rows or TaskRows(self.estimate_examples, name)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.batch_rows is not None:
            self.batch_rows.observe(trainer, batch, self._seed(trainer))

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        # runs again on resume: only caches, and takes the first anchor when no state exists yet
        if self.batch_rows is not None:
            self.batch_rows.start(trainer, task.index)
        self._tracked = list(trainable_parameters(pl_module).items())
        self._to_device(pl_module.device)
        if not self.anchor and self.anchor_from_start():
            self.anchor = self._snapshot()

    def anchor_from_start(self) -> bool:
        """Whether the anchor is taken when the first task starts (L2Anchor, SI) instead of when it ends."""
        return False

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.before_penalty(trainer, pl_module)
        if not self.anchor or (self.uses_importance and not self.importance):
            return
        triples = [(p, self.anchor[n], self.importance.get(n)) for n, p in self._tracked if n in self.anchor]
        if self.uses_importance:
            triples = [t for t in triples if t[2] is not None]
        if not triples:
            return
        params = [p for p, _, _ in triples]
        for p in params:  # a parameter unused this step still feels the penalty
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        log = logs_this_step(trainer)  # the penalty's value costs a reduction: only where Lightning logs it
        # elementwise, so exact on each rank's shard under FSDP (plain tensors: `local` is the identity)
        value = add_quadratic_penalty_grad_(
            [local(p.grad) for p in params], [local(p) for p in params], [local(a) for _, a, _ in triples],
            [local(i) for _, _, i in triples] if self.uses_importance else None, self.strength, return_value=log)
        if value is not None and is_dtensor(params[0]):
            value = trainer.strategy.reduce(value, reduce_op="sum")  # the shards' sums
        if value is not None:
            pl_module.log(f"train/penalty_{self.penalty_name}", value, on_step=True, on_epoch=False, batch_size=1)

    def before_penalty(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called in ``on_before_optimizer_step`` before the penalty's gradient is added (SI reads the task
        gradient here)."""

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        # The state follows the model's device here (the accelerator from `on_train_end`; the CPU when a resumed
        # fit skipped the training loop and the task ends from `on_fit_end`, after teardown)
        self._tracked = list(trainable_parameters(pl_module).items())
        self._to_device(pl_module.device)
        new = self.task_importance(trainer, pl_module, task)
        if new is not None and self.uses_importance:
            self.importance_means.append(self._normalize(trainer, list(new.values())) if self.normalize else
                                         float(torch.stack([gather_full(t.double().mean()) for t in new.values()])
                                               .mean()))
        self.consolidate(new, decay=self.decay)

    @staticmethod
    def _normalize(trainer: pl.Trainer, importances: list[Tensor]) -> float:
        """:func:`normalize_importance_`, on each rank's shards under FSDP (the sum all-reduced once)."""
        if not any(is_dtensor(t) for t in importances):
            return normalize_importance_(importances)
        return normalize_importance_([local(t) for t in importances],  # DTensor numel: the full tensor's
                                     count=sum(t.numel() for t in importances),
                                     reduce=lambda total: trainer.strategy.reduce(total, reduce_op="sum"))

    @property
    def decay(self) -> float:
        """How much of the old importance survives a task (online EWC's ``γ``; 1 for the others)."""
        return 1.0

    # ---- for subclasses --------------------------------------------------------------------------------------
    def task_importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo
                        ) -> dict[str, Tensor] | None:
        """The finished task's importance per tracked parameter (state dtype, on the module's device)."""
        return None

    def consolidate(self, new: dict[str, Tensor] | None, *, decay: float = 1.0) -> None:
        """``Ω ← decay · Ω + Ω_task``; the anchor becomes the current weights (``latest``) or, per element, the
        ``Ω``-weighted mean of the old anchor and the current weights (``anchor_update = "weighted_mean"``: the sum of one penalty
        per task, ``Σ_t Ω_t (θ − θ_t)²``, equals ``(Σ_t Ω_t)(θ − θ̄)²`` plus a constant, so two tensors hold
        every task's penalty)."""
        theta = self._snapshot()
        if new is None:
            self.anchor = theta
            return
        for name, current in theta.items():
            fresh = new.get(name)
            if fresh is None:
                continue
            old = self.importance.get(name)
            if old is None:  # a parameter seen for the first time
                self.importance[name], self.anchor[name] = fresh, current
                continue
            if self.anchor_update == "weighted_mean" and name in self.anchor:
                total = old * decay + fresh
                mean = torch.where(total > 0, (old * decay * self.anchor[name] + fresh * current)
                                   / total.clamp_min(torch.finfo(total.dtype).tiny), current)
                self.importance[name], self.anchor[name] = total, mean
            else:
                self.importance[name] = old.mul_(decay).add_(fresh)
                self.anchor[name] = current

    # ---- importance estimation over a task's training examples ----------------------------------------------
    def gradient_statistic(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo,
                           loss_fn: MicroBatchLoss, statistic: Statistic, *, num_examples: int,
                           batch_size: int, uniform_width: int = 0) -> dict[str, Tensor]:
        """Mean over (at most) ``num_examples`` of the finished task's training examples (the stream's, or rows
        of the task's training batches when the datamodule has none) of ``g²`` or ``|g|``, ``g`` the gradient of
        ``loss_fn`` over the tracked parameters.

        The examples are a random subset (generator seeded from ``(seed, task)``) split across ranks; each rank
        runs the unwrapped module in eval mode on micro-batches of ``batch_size`` of its share (``1``: exact
        per-example statistics; larger: ``m · g_m²`` or ``m · |g_m|`` of the micro-batch-mean gradient, faster
        and approximate), the per-rank sums are all-reduced and divided by the number of examples, so every rank
        holds the same result. ``uniform_width > 0`` gives ``loss_fn`` uniforms ``(B, uniform_width)`` drawn per
        example from the same generator (for sampling labels independently of the number of ranks)."""
        dm = trainer.datamodule
        if self.batch_rows is not None:  # rows of the task's training batches, every rank's
            examples, collate = self.batch_rows.gather(trainer), stack_rows
            self.batch_rows.clear()
        else:
            examples = ([ex for exs in dm.train_examples for ex in exs] if getattr(dm, "joint", False)
                        else dm.train_examples[task.index])
            collate = dm.collate
        g = seeded_generator(self._seed(trainer), task.index, 0x1F)
        chosen = torch.randperm(len(examples), generator=g)[:num_examples]
        n = len(chosen)
        uniforms = torch.rand(n, uniform_width, generator=g) if uniform_width else None
        params = [p for _, p in self._tracked]
        # a task ending from `on_fit_end` finds the model on the CPU: estimate on the accelerator, then move back
        home = pl_module.device
        device = getattr(getattr(trainer, "strategy", None), "root_device", None) or home
        world, rank = trainer.world_size, trainer.global_rank
        # FSDP: every rank runs every example (its all-gathers and reduce-scatters are collectives, and the
        # reduce-scattered gradient of an example all ranks saw is that example's gradient), and keeps the
        # statistic of its own shard; otherwise the examples are split over the ranks and the sums all-reduced.
        sharded = any(is_dtensor(p) for p in params)
        per = -(-n // world)
        shares = [range(r * per, min((r + 1) * per, n)) for r in (range(world) if sharded else [rank])]
        micro = [list(share[i : i + batch_size]) for share in shares for i in range(0, len(share), batch_size)]
        pl_module.to(device)
        sums = [torch.zeros_like(p, dtype=self._state_dtype(p)) for p in params]
        acc = [local(t) for t in sums]
        try:
            with eval_mode(pl_module), torch.enable_grad(), trainer.precision_plugin.forward_context():
                for rows in micro:  # under FSDP: every rank's micro-batches, as DDP's ranks would run them
                    batch = move_data_to_device(collate([examples[int(chosen[i])] for i in rows]), device)
                    u = uniforms[rows].to(device) if uniforms is not None else None
                    loss = loss_fn(pl_module, batch, pl_module(batch), u)
                    if sharded:
                        for p in params:
                            p.grad = None
                        loss.backward()
                        grads = [local(p.grad) if p.grad is not None else None for p in params]
                    else:
                        grads = torch.autograd.grad(loss, params, allow_unused=True)
                    grads = [(gr if gr is not None else torch.zeros_like(a)).to(a.dtype) for gr, a in zip(grads, acc)]
                    if statistic == "square":
                        torch._foreach_addcmul_(acc, grads, grads, value=float(len(rows)))
                    else:
                        torch._foreach_add_(acc, torch._foreach_abs(grads), alpha=float(len(rows)))
        finally:
            if sharded:
                for p in params:  # the estimate's gradients are not the task's
                    p.grad = None
        if world > 1 and not sharded:
            flat = trainer.strategy.reduce(torch.cat([s.reshape(-1) for s in sums]), reduce_op="sum")
            sums = acc = [f.view_as(s) for f, s in zip(flat.split([s.numel() for s in sums]), sums)]
        torch._foreach_div_(acc, float(max(n, 1)))
        pl_module.to(home)
        return {name: s.to(home) for (name, _), s in zip(self._tracked, sums)}

    # ---- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # full tensors: under FSDP a gather on every rank (Lightning and the runner call this on all ranks)
        state = {**super().state_dict(),
                 "anchor": {n: gather_full(t.detach()).cpu().clone() for n, t in self.anchor.items()},
                 "importance": {n: gather_full(t.detach()).cpu().clone() for n, t in self.importance.items()},
                 "importance_means": list(self.importance_means)}
        if self.batch_rows is not None:  # the estimate's rows of a task under way (a collective under DDP)
            state["batch_rows"] = self.batch_rows.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.anchor = dict(state_dict["anchor"])  # moved to the module's device when the next task starts
        self.importance = dict(state_dict["importance"])
        self.importance_means = [float(v) for v in state_dict["importance_means"]]
        if "batch_rows" in state_dict:
            self.batch_rows = self.batch_rows or TaskRows(self.estimate_examples, type(self).__name__)
            self.batch_rows.load_state_dict(state_dict["batch_rows"])
