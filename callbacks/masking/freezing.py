"""FreezeParameters: freeze parameters by name, glob, regex, layer range or preset, optionally per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from clight.callback import ContinualCallback, current_task
from clight.callbacks._utils import check_arg, check_head, check_head_arg, head_parameter_names
from clight.callbacks.masking.base import set_frozen
from clight.errors import ClightConfigError
from clight.functional.masking import (
    Selector,
    is_bias,
    is_embedding,
    is_norm,
    layer_index,
    normalize_name,
    parse_selector,
)

Preset = Literal["bitfit", "layernorm", "embeddings", "lower_layers"]
_SYNTAX = ("Selectors are a dotted name (`embeddings`, `encoder.layer.0`, `head`), a glob (`*.bias`), "
           "`re:<regex>` or `layers:<first>-<last>`.")


@dataclass(frozen=True)
class _Plan:
    """What one task freezes: ``freeze`` selectors, ``train_only`` selectors (everything else is frozen)."""

    label: str
    freeze: tuple[tuple[str, Selector], ...]
    train_only: tuple[tuple[str, Selector], ...]
    freeze_head: bool
    num_layers: int | None  # the `lower_layers` preset's count, checked against the model in `setup`

    def frozen(self, names: list[str], head: set[str]) -> set[str]:
        out = {n for n in names if any(sel(n) for _, sel in self.freeze)}
        if self.train_only:
            out |= {n for n in names if not any(sel(n) for _, sel in self.train_only)}
        return out | head if self.freeze_head else out - head


def _plan(label: str, freeze: Any, train_only: Any, preset: Any, num_layers: Any, freeze_head: Any) -> _Plan:
    where = "" if label == "" else f"{label}."
    fix = "See the `FreezeParameters` docstring."
    for arg, value in (("freeze", freeze), ("train_only", train_only)):
        check_arg(value is None or (isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value)),
                  f"{where}{arg}", "a list of selector strings", value, _SYNTAX)
    check_arg(preset is None or preset in get_args(Preset), f"{where}preset", f"empty or one of {list(get_args(Preset))}",
              preset, fix)
    check_arg(num_layers is None or (isinstance(num_layers, int) and not isinstance(num_layers, bool)
                                     and num_layers >= 1), f"{where}num_layers", "empty or an integer >= 1",
              num_layers, "Give the number of lower transformer layers to freeze, e.g. `num_layers: 3`.")
    check_arg(preset != "lower_layers" or num_layers is not None, f"{where}num_layers",
              "set when `preset: lower_layers`", num_layers, "Add e.g. `num_layers: 3`.")
    check_arg(isinstance(freeze_head, bool), f"{where}freeze_head", "true or false", freeze_head, fix)

    def parsed(arg: str, texts: Any) -> list[tuple[str, Selector]]:
        out = []
        for i, text in enumerate(texts or ()):
            try:
                out.append((text, parse_selector(text)))
            except ValueError as err:
                raise ClightConfigError(f"`{where}{arg}[{i}]` = {text!r} is not a valid selector: {err}. "
                                        f"{_SYNTAX}") from err
        return out

    frz, train = parsed("freeze", freeze), parsed("train_only", train_only)
    if preset == "bitfit":
        train.append(("preset bitfit (biases)", is_bias))
    elif preset == "layernorm":
        train.append(("preset layernorm (normalization layers)", is_norm))
    elif preset in ("embeddings", "lower_layers"):
        frz.append((f"preset {preset} (embeddings)", is_embedding))
    if preset == "lower_layers":
        frz.append((f"preset lower_layers (layers 0-{num_layers - 1})", parse_selector(f"layers:0-{num_layers - 1}")))
    return _Plan(label or "top level", tuple(frz), tuple(train), freeze_head,
                 num_layers if preset == "lower_layers" else None)


class FreezeParameters(ContinualCallback):
    """Freeze parameters for real (``requires_grad=False`` before the optimizer exists), chosen by name, glob,
    regex, transformer-layer range or preset, optionally with a different set per task.

    Frozen parameters get no gradient, no optimizer state and no place in the optimizer, so they cost neither
    backward time for their weight gradients nor memory. The choice is applied in ``setup`` of every task's
    fresh Trainer (before ``configure_optimizers`` and the DDP wrap); a parameter that an earlier task froze and
    the current task does not is trained again. Parameters frozen by someone else (a peft base model) stay
    frozen. The output head (the submodule named by ``head``, else the module's ``output_head()``) always stays
    trainable, since every task brings new classes, unless ``freeze_head: true``. After the stream the last
    task's parameters stay frozen.

    Selectors (strings) match the module's ``named_parameters()`` names, e.g.
    ``backbone.encoder.layer.3.attention.self.query.weight`` or ``head.linear.weight``:

    - a dotted run of whole segments: ``embeddings``, ``encoder.layer.0``, ``attention.self.query``;
    - a glob over the whole name: ``*.bias``, ``*.LayerNorm.*``;
    - ``re:<regex>`` (``re.search``): ``re:layer\\.[0-2]\\.``;
    - ``layers:<first>-<last>`` (inclusive), ``layers:<i>`` or ``layers:<first>-``: transformer layers, read
      from ``layer.<i>.`` / ``layers.<i>.`` / ``h.<i>.`` / ``blocks.<i>.`` in the names.

    Every selector must match at least one parameter (checked in ``setup``, for every schedule entry).

    Args:
        freeze: selectors of parameters to freeze.
        train_only: selectors of the only parameters to train; every other parameter is frozen (the head
            excepted). Combines with ``freeze`` and ``preset`` (the frozen set is their union).
        preset: ``bitfit`` (train only biases, Ben Zaken et al. 2022), ``layernorm`` (train only normalization
            layers, LN-tuning), ``embeddings`` (freeze the embeddings), ``lower_layers`` (freeze the embeddings
            and the lowest ``num_layers`` transformer layers, as in "What Would Elsa Do?").
        num_layers: how many lower layers ``preset: lower_layers`` freezes.
        freeze_head: freeze the classification head too.
        schedule: per-task plans: ``{task index: {freeze: [...], train_only: [...], preset: ..., num_layers:
            ..., freeze_head: ...}}``. An entry replaces the top-level arguments from that task on, up to the
            next entry; tasks before the first entry use the top-level arguments. ``{}`` trains everything.
        head: the dotted name of the module's output layer (e.g. ``classifier``); empty: the module's
            ``output_head()``.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: clight.callbacks.FreezeParameters
              init_args: {preset: lower_layers, num_layers: 3}
            # or: train only biases; or freeze by selector, changing the set from the third task on
            - class_path: clight.callbacks.FreezeParameters
              init_args:
                freeze: [embeddings, "layers:0-1"]
                schedule:
                  2: {freeze: [embeddings, "layers:0-3"]}
    """

    # FSDP2 keeps each parameter a DTensor of its own, so `requires_grad` stays per parameter: a frozen one gets no
    # gradient and no optimizer state on any rank (tests/test_sharded.py compares with DDP)
    supports_sharded = True

    def __init__(
        self,
        *,
        freeze: list[str] | None = None,
        train_only: list[str] | None = None,
        preset: Preset | None = None,
        num_layers: int | None = None,
        freeze_head: bool = False,
        schedule: dict[int, dict[str, Any]] | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__()
        check_head_arg(head)
        self.head = head
        self._args = dict(freeze=list(freeze or []), train_only=list(train_only or []), preset=preset,
                          num_layers=num_layers, freeze_head=freeze_head,
                          schedule={k: dict(v) for k, v in (schedule or {}).items()})
        if head is not None:  # (only when given: the state keys of runs without it stay as they were)
            self._args["head"] = head
        plans: dict[int, _Plan] = {0: _plan("", freeze, train_only, preset, num_layers, freeze_head)}
        check_arg(isinstance(schedule, dict) or schedule is None, "schedule", "a mapping {task index: plan}",
                  schedule, "See the `FreezeParameters` docstring.")
        keys = ("freeze", "train_only", "preset", "num_layers", "freeze_head")
        for key, entry in (schedule or {}).items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                index = -1
            check_arg(index >= 0, "schedule", "keyed by task indices >= 0", key, "Use e.g. `schedule: {2: {...}}`.")
            check_arg(isinstance(entry, dict) and set(entry) <= set(keys), f"schedule[{index}]",
                      f"a mapping with keys among {list(keys)}", entry, "See the `FreezeParameters` docstring.")
            plans[index] = _plan(f"schedule[{index}]", entry.get("freeze"), entry.get("train_only"),
                                 entry.get("preset"), entry.get("num_layers"), entry.get("freeze_head", False))
        top = plans[0]
        if not schedule and not (top.freeze or top.train_only or top.freeze_head):
            raise ClightConfigError("`FreezeParameters` has nothing to freeze: give `freeze`, `train_only`, "
                                    "`preset`, `freeze_head` or a `schedule`, or remove the callback.")
        self._plans = sorted(plans.items())
        self._checked = False
        self.frozen_counts: dict[int, int] = {}  # task index -> frozen parameter tensors (for reports)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._args)

    def plan_for(self, task_index: int) -> _Plan:
        """The plan that applies to task ``task_index``."""
        return [plan for start, plan in self._plans if start <= task_index][-1]

    def frozen_names(self, pl_module: nn.Module, task_index: int) -> set[str]:
        """The normalized names of the parameters frozen for task ``task_index``."""
        names = [normalize_name(n) for n, _ in pl_module.named_parameters()]
        return self.plan_for(task_index).frozen(names, head_parameter_names(pl_module, self.head))

    def _check(self, pl_module: nn.Module) -> None:
        check_head(pl_module, self.head, "FreezeParameters")
        names = [normalize_name(n) for n, _ in pl_module.named_parameters()]
        examples = ", ".join(f"`{n}`" for n in names[:: max(1, len(names) // 4)][:4])
        layers = {i for n in names if (i := layer_index(n)) is not None}
        for _, plan in self._plans:
            for arg, selectors in (("freeze", plan.freeze), ("train_only", plan.train_only)):
                for text, sel in selectors:
                    if not any(sel(n) for n in names):
                        where = "" if plan.label == "top level" else f"{plan.label}."
                        raise ClightConfigError(
                            f"`{where}{arg}`: {text!r} matches no parameter of the module (names look like "
                            f"{examples}). {_SYNTAX} Fix the selector or remove it."
                        )
            if plan.num_layers is not None and plan.num_layers > len(layers):
                raise ClightConfigError(
                    f"`num_layers` ({plan.label}): {plan.num_layers} lower layers asked, but the model has "
                    f"{len(layers)} transformer layers. Give at most {len(layers)}."
                )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if not self._checked:
            self._check(pl_module)
            self._checked = True
        task = current_task(trainer, self.tasks_seen)
        frozen = self.frozen_names(pl_module, task.index)
        count, total = set_frozen(pl_module, self.state_key, frozen)
        self.frozen_counts[task.index] = len(frozen)
        share = sum(p.numel() for p in pl_module.parameters() if not p.requires_grad)
        share /= max(1, sum(p.numel() for p in pl_module.parameters()))
        rank_zero_info(f"FreezeParameters: task {task.name!r}: {count}/{total} parameter tensors frozen "
                       f"({share:.1%} of the weights)")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "frozen_counts": dict(self.frozen_counts)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.frozen_counts = {int(k): int(v) for k, v in state_dict["frozen_counts"].items()}
