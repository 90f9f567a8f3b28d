"""GradientMask: keep chosen parameter entries from moving — small gradients (GMT), entries important to
earlier tasks, or the sparse regions that earlier tasks changed most."""

from __future__ import annotations

from typing import Any, Literal, get_args

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from clight.callback import ContinualCallback
from clight.callbacks._utils import check_arg, check_head, check_head_arg, head_parameter_names
from clight.callbacks.masking.base import MaskFitState, mask_scope, reused_buffer, thresholds
from clight.errors import ClightConfigError
from clight.functional.masking import (
    fold_importance,
    normalize_name,
    pack_bits,
    sparse_regions,
    unpack_bits,
)
from clight.sharding import (
    gather_full,
    is_dtensor,
    like_param,
    local,
    local_rows,
    row_shards,
)
from clight.task import TaskInfo

Mode = Literal["magnitude", "importance", "sparse"]
Scope = Literal["tensor", "global"]
Importance = Literal["fisher", "path"]


class GradientMask(ContinualCallback):
    """Mask parameter entries out of every optimizer step, so that masked weights stay bit-identical.

    Modes (``fraction`` is always the share of entries masked):

    - ``magnitude`` — Gradient-Mask Tuning (Li et al. 2024): each step masks the entries with the smallest
      accumulated ``|gradient|`` (per tensor, or over all with ``scope: global``; zero gradients always).
    - ``importance`` — the top entries of a running importance accumulated over the earlier tasks (``fisher``:
      mean squared gradient; ``path``: ``Σ |g · Δθ|`` as in synaptic intelligence).
    - ``sparse`` — skill localization / sparse fine-tuning (Panigrahi et al. 2023; Ansell et al. 2022): each task
      end, the free entries the task changed most become its region, masked on later tasks (``reset: true``
      also undoes its changes outside the region).

    Masked weights stay bit-identical under any optimizer (AdamW's decay and momentum included): the masked
    gradient entries are zeroed in ``on_before_optimizer_step`` and the masked weights are written back after
    ``optimizer.step()``. The output head (``head``, else the module's ``output_head()``) is left out unless
    ``include_head: true``. How it stays exact,
    runs under DDP and FSDP2, what its checkpoint holds and what a step costs: docs/techniques/masking.md.

    Args:
        mode: ``magnitude``, ``importance`` or ``sparse`` (above).
        fraction: share of entries masked, in (0, 1): per step (``magnitude``), of the running importance
            (``importance``), or each task's new region (``sparse``).
        scope: ``tensor`` (the fraction of every parameter tensor) or ``global`` (of all entries together).
        importance: ``fisher`` or ``path`` (mode ``importance`` only).
        reset: undo each task's changes outside its region at task end (mode ``sparse`` only).
        include_head: mask the classification head's entries too.
        sample_size: entries sampled per tensor (``scope: global``: in all) for the magnitude threshold.
        head: the dotted name of the module's output layer (e.g. ``classifier``); empty: its ``output_head()``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.GradientMask
              init_args: {mode: importance, fraction: 0.2, importance: fisher}
    """

    supports_sharded = True  # see the docstring; tests/test_sharded.py compares masks and thresholds with DDP

    def __init__(
        self,
        *,
        mode: Mode = "magnitude",
        fraction: float = 0.2,
        scope: Scope = "tensor",
        importance: Importance = "fisher",
        reset: bool = False,
        include_head: bool = False,
        sample_size: int = 16384,
        head: str | None = None,
    ) -> None:
        super().__init__()
        check_head_arg(head)
        fix = "See the `GradientMask` docstring."
        check_arg(mode in get_args(Mode), "mode", f"one of {list(get_args(Mode))}", mode, fix)
        check_arg(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1,
                  "fraction", "a number in (0, 1)", fraction, "E.g. `fraction: 0.2` masks a fifth of the entries.")
        check_arg(scope in get_args(Scope), "scope", f"one of {list(get_args(Scope))}", scope, fix)
        check_arg(importance in get_args(Importance), "importance", f"one of {list(get_args(Importance))}",
                  importance, fix)
        check_arg(isinstance(reset, bool), "reset", "true or false", reset, fix)
        check_arg(not reset or mode == "sparse", "reset", "false unless `mode: sparse`", reset,
                  "Remove `reset` or use `mode: sparse`.")
        check_arg(isinstance(include_head, bool), "include_head", "true or false", include_head, fix)
        check_arg(isinstance(sample_size, int) and not isinstance(sample_size, bool) and sample_size >= 16,
                  "sample_size", "an integer >= 16", sample_size, "The default 16384 is accurate to ~1%.")
        self.mode, self.fraction, self.scope, self.importance = mode, float(fraction), scope, importance
        self.reset, self.include_head, self.sample_size = reset, include_head, sample_size
        self.head = head
        self.masks: dict[str, Tensor] = {}  # fixed masks (importance, sparse): bool, CPU, parameter shape
        self.running: dict[str, Tensor] = {}  # running importance: bfloat16, CPU
        self._acc: dict[str, Tensor] = {}  # this task's importance accumulator (device during training)
        self._acc_steps, self._acc_task = 0, -1
        self._start: dict[str, Tensor] = {}  # sparse: this task's start weights (float32, CPU)
        self._start_task = -1
        self.steps = 0  # masked optimizer steps over the stream
        self._fit = MaskFitState()  # device state of the current fit
        self._armed: tuple[str, list[Any]] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, fraction=self.fraction, scope=self.scope,
                                        importance=self.importance, reset=self.reset, include_head=self.include_head)

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not pl_module.automatic_optimization:
            raise ClightConfigError("`GradientMask` masks gradients in automatic optimization; the module uses "
                                    "manual optimization. Mask in your own `training_step`, or remove the callback.")
        if stage == "fit" and not self.include_head:
            check_head(pl_module, self.head, "GradientMask")

    def _in_scope(self, pl_module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return mask_scope(pl_module, set() if self.include_head else head_parameter_names(pl_module, self.head))

    def on_task_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        # Runs again when a task resumes mid-way: the state loaded from the mid-task checkpoint is kept.
        if self.mode == "sparse" and self._start_task != task.index:
            self._start = {n: gather_full(p.detach()).float().cpu().clone() for n, p in self._in_scope(pl_module)}
            self._start_task = task.index
        if self.mode == "importance" and self._acc_task != task.index:
            self._acc, self._acc_steps, self._acc_task = {}, 0, task.index

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._release()
        fit = self._fit = MaskFitState(scope=self._in_scope(pl_module))
        device = fit.scope[0][1].device if fit.scope else torch.device("cpu")
        params = dict(fit.scope)
        fit.shards = {n: row_shards(p) for n, p in fit.scope if is_dtensor(p)}  # fixed for the fit
        # a loaded accumulator is a full CPU tensor: back on the device, sharded like its parameter under FSDP
        self._acc = {n: like_param(a, params[n]) if n in params else a.to(device) for n, a in self._acc.items()}
        self._armed = None
        masked = total = 0
        for name, p in fit.scope:
            total += p.numel()
            mask = self.masks.get(name)
            if mask is None:
                continue
            masked += int(mask.sum())
            index = local_rows(mask, p).reshape(-1).nonzero().view(-1)  # this rank's rows under FSDP
            if index.numel():
                fit.index[name] = index.to(device)
                fit.buffers[name] = torch.empty(index.numel(), dtype=p.dtype, device=device)
        for optimizer in trainer.optimizers:
            self._fit.handles.append(optimizer.register_step_post_hook(self._after_step))
        if self.mode != "magnitude":
            rank_zero_info(f"GradientMask[{self.mode}]: {masked}/{total} trainable entries masked "
                           f"({masked / max(1, total):.1%})")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()
        super().on_train_end(trainer, pl_module)  # the task ends (task-end statistics) after the hooks are gone

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        for handle in self._fit.handles:
            handle.remove()
        self._fit, self._armed = MaskFitState(), None

    # ---- every step -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._armed = None
        live = [(n, p) for n, p in self._fit.scope if p.grad is not None]
        if not live:
            return
        names = [n for n, _ in live]
        params = [local(p) for _, p in live]  # this rank's shards under FSDP2: every step's work is elementwise
        grads = [local(p.grad) for _, p in live]
        accs = [local(self._acc_buffer(n, p)) for n, p in live] if self.mode == "importance" else []
        if self.mode == "importance" and self.importance == "fisher":
            torch._foreach_addcmul_(accs, grads, grads)
        if self.mode == "importance":
            self._acc_steps += 1
        if self.mode == "magnitude":
            for g, lam in zip(grads, thresholds(live, grads, self.fraction, self.scope, self.sample_size, self._fit.shards)):
                if lam >= 0:
                    torch.hardshrink(g, lam, out=g)  # g if |g| > λ else 0
            stash = [reused_buffer(self._fit.buffers, n, p) for n, p in zip(names, params)]
            torch._foreach_copy_(stash, params)
            self._armed = ("magnitude", [names, params, grads, stash])
            self.steps += 1
            return
        fixed = [(n, p, g) for n, p, g in zip(names, params, grads) if n in self._fit.index]
        for n, p, g in fixed:
            index = self._fit.index[n]
            g.view(-1).index_fill_(0, index, 0)
            torch.index_select(p.view(-1), 0, index, out=self._fit.buffers[n])
        dense = None
        if self.mode == "importance" and self.importance == "path":
            dense = [reused_buffer(self._fit.dense, n, p) for n, p in zip(names, params)]
            torch._foreach_copy_(dense, params)
        if fixed or dense is not None:
            self._armed = ("fixed", [fixed, params, grads, dense, accs])
            self.steps += int(bool(fixed))

    def _acc_buffer(self, name: str, p: Tensor) -> Tensor:
        acc = self._acc.get(name)
        if acc is None:
            acc = self._acc[name] = torch.zeros_like(p, dtype=torch.float32)
        return acc

    @torch.no_grad()
    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        armed, self._armed = self._armed, None
        if armed is None:
            return
        kind, payload = armed
        if kind == "magnitude":
            names, params, grads, stash = payload
            for n, p, g, s in zip(names, params, grads, stash):
                flag = reused_buffer(self._fit.flags, n, g, torch.bool)
                torch.eq(g, 0, out=flag)
                torch.where(flag, s, p, out=p)
            return
        fixed, params, grads, dense, accs = payload
        for n, p, _ in fixed:
            p.view(-1).index_copy_(0, self._fit.index[n], self._fit.buffers[n])
        if dense is not None:  # path importance: |g · Δθ| of this step, masked entries included (Δθ = 0)
            torch._foreach_sub_(dense, params)  # θ_before − θ_after
            torch._foreach_mul_(dense, grads)
            torch._foreach_abs_(dense)
            torch._foreach_add_(accs, dense)

    # ---- task end -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: TaskInfo) -> None:
        if self.mode == "importance" and self._acc:
            self._fold_importance()
        elif self.mode == "sparse" and self._start:
            self._fold_sparse(pl_module)

    def _fold_importance(self) -> None:
        task = {n: gather_full(a).float().cpu() / max(1, self._acc_steps) for n, a in self._acc.items()}  # full
        self.running, masks = fold_importance(self.running, task, self.fraction, self.scope)
        self.masks.update(masks)
        self._acc, self._acc_steps, self._acc_task = {}, 0, -1

    def _fold_sparse(self, pl_module: nn.Module) -> None:
        params = dict((normalize_name(n), p) for n, p in pl_module.named_parameters())
        names = [n for n in self._start if n in params]
        free = [~self.masks[n] if n in self.masks else torch.ones_like(self._start[n], dtype=torch.bool)
                for n in names]
        now = [gather_full(params[n].detach()).float().cpu() for n in names]  # full tensors under FSDP2 too
        change = [(w - self._start[n]).abs() for n, w in zip(names, now)]
        for n, w, f, region in zip(names, now, free, sparse_regions(change, free, self.fraction, self.scope)):
            if self.reset:  # back to the start outside the masks and the new region (float32 holds both exactly)
                p = params[n]
                local(p).copy_(local_rows(torch.where(f & ~region, self._start[n], w), p))
            self.masks[n] = ~f | region
        self._start, self._start_task = {}, -1

    # ---- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "steps": self.steps,
            "masks": {n: pack_bits(m) for n, m in self.masks.items()},
            "mask_shapes": {n: list(m.shape) for n, m in self.masks.items()},
            "running": {n: r.clone() for n, r in self.running.items()},
            "acc": {n: gather_full(a.detach()).cpu().clone() for n, a in self._acc.items()},  # a collective (FSDP2)
            "acc_steps": self._acc_steps, "acc_task": self._acc_task,
            "start": {n: s.clone() for n, s in self._start.items()}, "start_task": self._start_task,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.steps = int(state_dict["steps"])
        shapes = state_dict["mask_shapes"]
        self.masks = {n: unpack_bits(bits, shapes[n]) for n, bits in state_dict["masks"].items()}
        self.running = {n: r.clone() for n, r in state_dict["running"].items()}
        self._acc = {n: a.clone() for n, a in state_dict["acc"].items()}
        self._acc_steps, self._acc_task = int(state_dict["acc_steps"]), int(state_dict["acc_task"])
        self._start = {n: s.clone() for n, s in state_dict["start"].items()}
        self._start_task = int(state_dict["start_task"])
