"""The base of the LoRA callbacks (LoRAPerTask, ChainOfLoRA, OrthogonalLoRA): the LoRA-backbone check, seeded
adapter initialisation, and merging an adapter into the frozen base weights."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn

from clight.callback import ContinualCallback, stream_seed
from clight.callbacks._utils import check_arg, seeded_generator
from clight.contracts import AdapterModel, require
from clight.errors import ClightConfigError


def adapter_parameters(pl_module: pl.LightningModule, name: str) -> list[nn.Parameter]:
    """The parameters of adapter ``name`` (its ``lora_A`` and ``lora_B`` of every LoRA layer), in layer order."""
    params: list[nn.Parameter] = []
    for layer in pl_module.lora_layers():
        for attr in ("lora_A", "lora_B"):
            if name in getattr(layer, attr):
                params.extend(getattr(layer, attr)[name].parameters())
        for attr in ("lora_embedding_A", "lora_embedding_B"):
            if name in getattr(layer, attr, {}):
                params.append(getattr(layer, attr)[name])
    return params


@torch.no_grad()
def reset_adapter_(pl_module: pl.LightningModule, name: str, generator: torch.Generator) -> None:
    """Re-initialise adapter ``name`` as peft does (``A`` Kaiming-uniform, or Gaussian with
    ``init_lora_weights: gaussian``; ``B`` zero, so the adapter starts as the identity), drawing from
    ``generator`` on the CPU: every rank and device gets the same adapter, whatever the global RNG did."""
    init = pl_module.peft_model.peft_config[name].init_lora_weights
    if init not in (True, "gaussian"):
        raise ClightConfigError(f"`peft.init_lora_weights`: the LoRA callbacks re-initialise adapters and support "
                                f"`true` (default) or `gaussian`, got {init!r}.")
    for layer in pl_module.lora_layers():
        if name in layer.lora_A:
            a = layer.lora_A[name].weight  # (r, in)
            fresh = torch.empty(a.shape, dtype=torch.float32)
            if init is True:
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
            else:
                fresh.normal_(0.0, 1.0 / layer.r[name], generator=generator)
            a.copy_(fresh)
            layer.lora_B[name].weight.zero_()
            if getattr(layer.lora_B[name], "bias", None) is not None:
                layer.lora_B[name].bias.zero_()
        if name in getattr(layer, "lora_embedding_A", {}):
            layer.lora_embedding_A[name].zero_()
            b = layer.lora_embedding_B[name]
            b.copy_(torch.empty(b.shape, dtype=torch.float32).normal_(generator=generator))


@torch.no_grad()
def merge_adapter_into_base_(pl_module: pl.LightningModule, name: str) -> list[str]:
    """Add adapter ``name``'s update ``scale * B @ A`` (peft's ``get_delta_weight``) to the frozen base weight of
    every LoRA layer, in place, and tell the module those base weights changed (so adapter-only checkpoints keep
    them). The adapter itself is left as it is. Returns the names of the changed base weights."""
    names = {id(p): n for n, p in pl_module.named_parameters()}
    changed = []
    for layer in pl_module.lora_layers():
        if name not in layer.lora_A and name not in getattr(layer, "lora_embedding_A", {}):
            continue
        weight = layer.get_base_layer().weight
        weight.add_(layer.get_delta_weight(name).to(weight.dtype))
        changed.append(names[id(weight)])
    pl_module.mark_base_modified(changed)
    return changed


class LoRACallback(ContinualCallback):
    """Base of the callbacks that manage the LoRA adapters of a peft ``ContinualModule``, or of any module that
    holds a ``peft.PeftModel`` through :class:`~clight.adapters.AdapterMixin`.

    Adapters live in the module (their weights and the list of adapters are part of its checkpoint); a callback
    adds, activates, freezes and merges them. New adapters are initialised from a generator seeded by
    ``(seed, task index, round)``, so every rank builds the same one and a resumed run the same as an
    uninterrupted one.
    """

    sharded_reason = ("it adds, switches and merges whole LoRA adapters (`B @ A` needs both full factors), which a "
                      "sharded strategy splits across ranks")

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__()
        check_arg(seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0), "seed",
                  "empty or an integer >= 0", seed, "Leave it empty to use the datamodule's seed.")
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        name = type(self).__name__
        # checked here rather than through `module_contracts`, for a way out that names the mixin
        require(pl_module, AdapterModel, who=name, role="module",
                fix="Subclass `clight.adapters.AdapterMixin` first (`class MyModule(AdapterMixin, pl.LightningModule)`; "
                    "docs/reuse.md), use `clight.ContinualModule`, or remove the callback.")
        if pl_module.peft_model is None or not pl_module.lora_layers():
            raise ClightConfigError(
                f"`{name}` needs a LoRA model: add `model.peft: {{r: 8, target_modules: [query, value]}}` to the "
                "config (`[q_proj, v_proj]` for Llama-style models; `peft_type` LORA, the default); a module of your "
                "own holds a `peft.get_peft_model(..., LoraConfig(...))` (docs/reuse.md). The module has no LoRA "
                "layers."
            )

    def _seed(self, trainer: pl.Trainer) -> int:
        return stream_seed(trainer, self.seed)

    def _generator(self, trainer: pl.Trainer, *keys: int) -> torch.Generator:
        return seeded_generator(self._seed(trainer), *keys)
