"""The run fingerprint: every setting that shapes a run's result as flat, human-named keys (the names of the config,
``model.optimizer.init_args.lr``), so that a resume with a changed setting is refused by name, old -> new.

The data itself is identified by the stream fingerprint (:meth:`ContinualDataModule.fingerprint`: task names, label
sets and a digest of every encoded example), so data file paths are left out here: a moved file with the same rows
resumes, a changed row does not.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

#: keys that change how a run is watched, where it is written or how often it is checkpointed, never its result
COSMETIC = frozenset({
    "config", "ckpt_path", "train_dataloaders", "val_dataloaders", "weights_only", "print_config",
    "stream.run_dir", "stream.resume", "stream.overwrite", "stream.checkpoint_every_n_steps",
    "stream.keep_task_checkpoints",
    "trainer.logger", "trainer.enable_checkpointing", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.default_root_dir", "trainer.profiler", "trainer.enable_autolog_hparams",
    "trainer.model_registry", "trainer.num_sanity_val_steps", "trainer.detect_anomaly", "trainer.barebones",
    "data.init_args.num_workers",
})
#: callbacks that only watch a run (progress, summaries, monitors) or save extra checkpoints
COSMETIC_CALLBACKS = frozenset({
    "TQDMProgressBar", "RichProgressBar", "ModelSummary", "RichModelSummary", "LearningRateMonitor",
    "DeviceStatsMonitor", "ModelCheckpoint",
})
# data and tokenizer locations: the stream fingerprint identifies their content
_PATHS = re.compile(r"^data\.init_args\.(train_file|test_file|tokenizer|tasks\[[^\]]*\]\.(train|test)|"
                    r"probes\[[^\]]*\]\.file|dataset\.(path|data_files|data_dir|cache_dir)(\..*)?)$")
ABSENT = object()


def plain(value: Any) -> Any:
    """``value`` as plain data (what ``torch.load(weights_only=True)`` reads back and JSON writes)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath) or hasattr(value, "__fspath__"):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        return plain(value.as_dict())
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _short(class_path: str) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat ``{dotted.key: plain value}`` of a config tree. A class (``class_path``/``init_args``) is one key holding
    its class path plus one key per argument; list entries that are classes or named things (tasks, probes) are
    keyed by their class or name (``trainer.callbacks[EWC].init_args.strength``, ``data.init_args.tasks[news]``)."""
    out = {} if out is None else out
    value = plain(value)
    if isinstance(value, dict) and "class_path" in value:
        out[prefix] = value["class_path"]
        for key, sub in value.items():
            if key != "class_path":
                flatten(sub, f"{prefix}.{key}", out)
    elif isinstance(value, dict) and value:
        for key, sub in value.items():
            flatten(sub, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and ("class_path" in v or "name" in v)
                                                   for v in value):
        seen: dict[str, int] = {}
        for item in value:
            label = _short(item["class_path"]) if "class_path" in item else str(item["name"])
            if prefix.endswith("callbacks") and label in COSMETIC_CALLBACKS:
                continue
            seen[label] = seen.get(label, 0) + 1
            key = f"{prefix}[{label}]" if seen[label] == 1 else f"{prefix}[{label}#{seen[label]}]"
            if "class_path" in item:
                flatten(item, key, out)
            else:
                out[key] = item["name"]
                for sub_key, sub in item.items():
                    if sub_key != "name":
                        flatten(sub, f"{key}.{sub_key}", out)
    elif value in (None, []) and prefix.endswith("callbacks"):
        pass  # no callbacks: the absence of their entries
    else:
        out[prefix] = value
    return out


def config_fingerprint(config: Any) -> dict[str, Any]:
    """The fingerprint of a parsed ``clight fit`` config (a jsonargparse namespace or a mapping): every key that
    shapes the result, cosmetic keys and data locations left out."""
    flat = flatten(config)
    return {k: v for k, v in flat.items() if k.split("[", 1)[0] not in COSMETIC and k not in COSMETIC
            and not _PATHS.match(k)}


def init_arguments(obj: Any) -> dict[str, Any]:
    """The constructor arguments an object still holds under their own names (``self.strength = strength``), as
    plain values: the best a fingerprint can say about an object built outside a config."""
    names: list[str] = []
    for cls in type(obj).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None or cls is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    out: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        if hasattr(obj, name) and not callable(getattr(obj, name)):
            value = plain(getattr(obj, name))
            if _is_plain(value):
                out[name] = value
    return out


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def show(value: Any) -> str:
    """A fingerprint value as the config would spell it."""
    if value is ABSENT:
        return "(absent)"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    if isinstance(value, str):
        return value if value.strip() == value and value else json.dumps(value)
    return repr(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs (the arguments of a class that changed, or is absent on one
    side, are not listed one by one: the class's own line says it)."""
    keys = list(dict.fromkeys([*new, *old]))
    changed = [k for k in keys if not _same(old.get(k, ABSENT), new.get(k, ABSENT))]
    lines = []
    for key in changed:
        if any(key != p and (key.startswith(p + ".") or key.startswith(p + "[")) for p in changed):
            continue
        lines.append(f"{key}: {show(old.get(key, ABSENT))} -> {show(new.get(key, ABSENT))}")
    return lines


def describe_differences(lines: Sequence[str], limit: int = 8) -> str:
    """The differences as one line: the first ``limit`` of them and how many more."""
    shown = "; ".join(lines[:limit])
    return shown + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")


def runner_fingerprint(*, seed: int, trainer_kwargs: Mapping[str, Any], callbacks: Sequence[Any], module: Any,
                       datamodule: Any, optimizer: Any = None) -> dict[str, Any]:
    """The fingerprint of a run built in Python (no config): the seed, the trainer's arguments, every continual
    callback's class and the constructor arguments it holds, the module's hyperparameters and its optimizer (class
    and defaults, from the optimizer it builds), and the datamodule's settings."""
    tree: dict[str, Any] = {
        "seed_everything": seed,
        "trainer": {**{k: v for k, v in trainer_kwargs.items() if k != "callbacks"},
                    "callbacks": [{"class_path": plain(type(cb)), "init_args": init_arguments(cb)} for cb in callbacks]},
        "model": dict(getattr(module, "hparams", {}) or {}),
        "data": {"class_path": plain(type(datamodule)), "init_args": init_arguments(datamodule)},
    }
    if optimizer is not None:
        defaults = {k: plain(v) for k, v in getattr(optimizer, "defaults", {}).items()}
        tree["model"]["optimizer"] = {"class_path": plain(type(optimizer)),
                                      "init_args": {k: v for k, v in defaults.items() if _is_plain(v)}}
    return config_fingerprint(tree)
