"""Named LoRA adapters and adapter-only checkpoints: the part of :class:`~clight.module.ContinualModule` that
speaks ``peft``."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from clight.errors import ClightConfigError


class AdapterMixin:
    """Named LoRA adapters of a LightningModule that holds a ``peft.PeftModel``: add, delete, activate, train and
    merge them (what the LoRA callbacks need, :class:`clight.contracts.AdapterModel`).

    Any LightningModule gets it by listing the mixin first; the module's first ``peft.PeftModel`` submodule is the
    one managed, and a new adapter is configured like its first adapter (override :meth:`new_adapter_config` for
    another config)::

        class MyModule(AdapterMixin, pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.encoder = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["query", "value"]))

    :class:`~clight.module.ContinualModule` uses it too, with its own parts: the config built from ``model.peft``
    and adapter-only checkpoints without the frozen base tensors (``backbone``, ``peft_config``, ``head`` and the
    ``_pristine``/``_modified`` sets it initialises).
    """

    backbone: nn.Module | None
    peft_config: Any
    _pristine: set[str]
    _modified: set[str]

    # ---- the peft config ---------------------------------------------------------------------------------------
    def _peft_spec(self) -> dict[str, Any]:
        spec = {"peft_type": "LORA", **(self.peft_config or {})}
        if self.head.auto_class == "AutoModelForCausalLM":  # type: ignore[attr-defined]
            spec.setdefault("task_type", "CAUSAL_LM")
        return spec

    def _new_peft_config(self) -> Any:
        import peft

        spec = self._peft_spec()
        try:
            return peft.get_peft_config(spec)
        except (TypeError, ValueError, KeyError) as err:
            raise ClightConfigError(f"`peft`: {spec} is not a valid peft config: {err}") from err

    def _apply_peft(self, backbone: nn.Module) -> nn.Module:
        import peft

        return peft.get_peft_model(backbone, self._new_peft_config())

    # ---- peft adapters (LoRA): named adapters, which ones apply and which train ------------------------------
    @property
    def peft_model(self) -> Any:
        """The module's first ``peft.PeftModel`` submodule (inside a ``torch.compile`` wrapper too), or ``None``."""
        peft = sys.modules.get("peft")  # a module holds no PeftModel until peft has been imported
        if peft is None:
            return None
        return next((m for m in self.modules() if isinstance(m, peft.PeftModel)), None)  # type: ignore[attr-defined]

    def new_adapter_config(self) -> Any:
        """The peft config of a new adapter (:meth:`add_adapter`): a copy of the first adapter's."""
        return copy.deepcopy(next(iter(self._require_peft("add_adapter").peft_config.values())))

    def lora_layers(self) -> list[nn.Module]:
        """The backbone's LoRA-wrapped layers (``peft.tuners.lora.LoraLayer``), in module order."""
        from peft.tuners.lora import LoraLayer

        peft_model = self._require_peft("lora_layers")
        return [m for m in peft_model.modules() if isinstance(m, LoraLayer)]

    @property
    def adapter_names(self) -> list[str]:
        """Names of the backbone's adapters, in the order they were added (``[]`` without ``peft``)."""
        return list(self.peft_model.peft_config) if self.peft_model is not None else []

    @property
    def active_adapters(self) -> list[str]:
        """Adapters applied in the forward pass (their outputs add up)."""
        return list(self.peft_model.active_adapters) if self.peft_model is not None else []

    @property
    def trainable_adapters(self) -> list[str]:
        """Adapters with a parameter that trains (``requires_grad``)."""
        return sorted({_adapter_of(n) for n, p in self.named_parameters()
                       if p.requires_grad and _is_adapter_key(n)} - {None})

    def add_adapter(self, name: str) -> None:
        """Add a LoRA adapter ``name`` configured like ``model.peft``; it starts inactive and frozen (activate it
        with :meth:`use_adapters`). Every other parameter keeps its ``requires_grad``."""
        peft_model = self._require_peft("add_adapter")
        if name in peft_model.peft_config:
            raise ValueError(f"adapter {name!r} already exists (adapters: {self.adapter_names}).")
        with self._keep_requires_grad():
            peft_model.add_adapter(name, self.new_adapter_config())

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (if it was active, the remaining active ones stay active)."""
        peft_model = self._require_peft("delete_adapter")
        with self._keep_requires_grad():
            peft_model.delete_adapter(name)

    def use_adapters(self, active: Sequence[str], trainable: Iterable[str] = ()) -> None:
        """Apply the adapters ``active`` in the forward pass and train those in ``trainable`` (a subset); every
        other adapter is frozen. Unlike peft's ``set_adapter``, nothing else changes ``requires_grad``."""
        peft_model = self._require_peft("use_adapters")
        active, trainable = list(active), set(trainable)
        unknown = sorted((set(active) | trainable) - set(peft_model.peft_config))
        if unknown or not active or not trainable <= set(active):
            raise ValueError(f"use_adapters: active={active}, trainable={sorted(trainable)} must be non-empty, "
                             f"known adapters ({self.adapter_names}), trainable a subset of active; bad: {unknown}.")
        with self._keep_requires_grad(adapters=False):
            if list(peft_model.active_adapters) != active:
                peft_model.base_model.set_adapter(active)
                peft_model.active_adapter = active[0]
            peft_model.base_model.set_requires_grad(self.adapter_names, False)
            if trainable:
                peft_model.base_model.set_requires_grad(sorted(trainable), True)

    def mark_base_modified(self, names: Iterable[str]) -> None:
        """Declare that the frozen base tensors ``names`` (parameter or state-dict names of this module) were
        changed in place, e.g. by merging an adapter into them: adapter-only checkpoints then store them."""
        self.__dict__.setdefault("_modified", set()).update(_plain_key(n) for n in names)

    def _require_peft(self, what: str) -> Any:
        peft_model = self.peft_model
        if peft_model is None:
            raise ClightConfigError(f"`{what}` needs a peft model: add `model.peft: {{r: 8, target_modules: [query, "
                                    "value]}` to the config (or build the module with `peft=`); a module of your own "
                                    "holds one from `peft.get_peft_model` (docs/reuse.md).")
        return peft_model

    @contextmanager
    def _keep_requires_grad(self, *, adapters: bool = True) -> Iterator[None]:
        """Restore every parameter's ``requires_grad`` after a peft call that toggles them (new parameters start
        frozen); with ``adapters=False`` the adapters' flags are left to the caller."""
        before = {id(p): p.requires_grad for p in self.parameters()}
        try:
            yield
        finally:
            for name, p in self.named_parameters():
                if adapters or not _is_adapter_key(name):
                    p.requires_grad_(before.get(id(p), False))

    # ---- adapter-only checkpoints ----------------------------------------------------------------------------
    def _record_pristine_base(self) -> None:
        """Remember the frozen base tensors as built: checkpoints leave them out (they are rebuilt from
        ``model``/``config`` and the seed) unless :meth:`mark_base_modified` says they changed."""
        trainable = {n for n, p in self.backbone.named_parameters() if p.requires_grad}
        self._pristine = {_plain_key("backbone." + k) for k in self.backbone.state_dict()
                          if k not in trainable and not _is_adapter_key(k)}
        self._modified = set()

    def _split_state(self, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
        """``state`` without the unchanged frozen base tensors, and the keys left out."""
        if not self._pristine:
            return dict(state), []
        trainable = {_plain_key(n) for n, p in self.named_parameters() if p.requires_grad}
        kept, left_out = {}, []
        for key, value in state.items():
            plain = _plain_key(key)
            if plain in self._pristine and plain not in self._modified and plain not in trainable:
                left_out.append(key)
            else:
                kept[key] = value
        return kept, left_out

    def _base_meta(self, state: Mapping[str, Tensor], left_out: list[str]) -> dict[str, Any]:
        return {
            "left_out": [_plain_key(k) for k in left_out],
            "fingerprint": _fingerprint([state[k] for k in left_out]),
            "modified": sorted(self._modified),
            "adapters": self.adapter_names,
            "active": self.active_adapters,
            "trainable": self.trainable_adapters,
        }

    def checkpoint_state(self) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
        """The weights to checkpoint (CPU tensors) and, for a peft module, what restores the rest.

        A peft module leaves out its frozen base tensors as built (adapter-only checkpoints): the base is
        rebuilt from ``model``/``config`` and the seed, checked against a per-tensor fingerprint on load.
        Frozen tensors changed in place (:meth:`mark_base_modified`) are kept. Without peft: the full state.
        """
        full = self.state_dict()
        kept, left_out = self._split_state(full)  # the left-out base never leaves the device
        meta = self._base_meta(full, left_out) if self._pristine else None
        return {k: v.detach().cpu() for k, v in kept.items()}, meta

    def restore_checkpoint_state(self, state: Mapping[str, Tensor], meta: Mapping[str, Any] | None
                                 ) -> dict[str, Tensor]:
        """Rebuild the adapter structure a checkpoint was written with and return its full state dict (left-out
        base tensors taken from this module after checking their fingerprint), ready for ``load_state_dict``."""
        if meta is None:
            return dict(state)
        if self.peft_model is not None:
            self._sync_adapters(list(meta["adapters"]), list(meta["active"]), list(meta["trainable"]))
        self._modified = set(meta["modified"])
        current = self.state_dict()
        by_plain = {_plain_key(k): k for k in current}
        missing = [k for k in meta["left_out"] if k not in by_plain]
        if missing:
            raise ClightConfigError(
                f"the checkpoint leaves out base tensors this module does not have ({missing[:3]}...): resume "
                "with the `model`/`config` and `peft` of the original run."
            )
        keys = [by_plain[k] for k in meta["left_out"]]
        now = _fingerprint([current[k] for k in keys])
        saved = meta["fingerprint"].to(torch.float64)
        bad = ((now[:, 0] - saved[:, 0]).abs() > 1e-6 * saved[:, 1] + 1e-12) | \
              ((now[:, 1] - saved[:, 1]).abs() > 1e-6 * saved[:, 1] + 1e-12)
        if bool(bad.any()):
            names = [meta["left_out"][i] for i in bad.nonzero().flatten().tolist()]
            raise ClightConfigError(
                f"the frozen base weights rebuilt for this run differ from those the checkpoint was trained on "
                f"({len(names)} tensors, e.g. {names[:2]}): a checkpoint of a peft run stores only what training "
                "changed. Resume with the original `model`/`config` and `seed_everything` (a config-built base is "
                "drawn from the seed); a callback that changes frozen weights in place must call "
                "`module.mark_base_modified(names)`."
            )
        full = dict(state)
        for key in keys:
            full[key] = current[key].detach()
        return full

    def _sync_adapters(self, names: list[str], active: list[str], trainable: list[str]) -> None:
        if (names, active, trainable) == (self.adapter_names, self.active_adapters, self.trainable_adapters):
            return  # as built (and the only way for peft's prompt learning, which has no named-adapter switching)
        for name in names:
            if name not in self.adapter_names:
                self.add_adapter(name)
        if active:
            self.use_adapters(active, trainable)
        for name in [n for n in self.adapter_names if n not in names]:
            self.delete_adapter(name)


def _plain_key(key: str) -> str:
    """A state-dict key without ``torch.compile``'s wrapper segment."""
    return key.replace("_orig_mod.", "")


_ADAPTER_SEGMENT = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.([^.]+)")


def _is_adapter_key(key: str) -> bool:
    return _ADAPTER_SEGMENT.search(key) is not None


def _adapter_of(key: str) -> str | None:
    found = _ADAPTER_SEGMENT.search(key)
    return found.group(1) if found else None


@torch.no_grad()
def _fingerprint(tensors: Sequence[Tensor]) -> Tensor:
    """Per tensor ``[sum, L2 norm]`` in float64 on the CPU, ``(K, 2)``: enough to tell a rebuilt base from
    another one (another seed, another model) without storing it."""
    rows = []
    for t in tensors:
        t = t.detach()
        if not t.is_floating_point():
            t = t.double()
        rows.append(torch.stack([t.sum(dtype=torch.float64), torch.linalg.vector_norm(t, dtype=torch.float64)]))
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 2, dtype=torch.float64)
