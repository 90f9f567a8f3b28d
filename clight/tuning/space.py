"""Search spaces of ``clight tune``: a YAML mapping from a config path to a distribution, and the trial's config.

A space file maps dotted paths into the ``clight fit`` config (list entries by index) to one distribution each::

    trainer.callbacks.0.init_args.strength: {log_uniform: [0.1, 10000]}
    model.optimizer.init_args.lr: {log_uniform: [1.0e-05, 2.0e-04]}
    trainer.callbacks.0.init_args.online: {choice: [true, false]}
    trainer.callbacks.0.init_args.num_examples: {int: [64, 512], log: true}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clight.errors import ClightConfigError

KINDS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    """One tuned value: its path in the config and its distribution."""

    path: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """Draw the value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.kind == "log_uniform")


def load_space(path: str | Path) -> list[Dimension]:
    """Read and check a space file; every problem is one line naming the entry."""
    file = Path(path)
    if not file.is_file():
        raise ClightConfigError(f"`--space`: {str(file)!r} does not exist; give a YAML file of `path: distribution`.")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ClightConfigError(f"`--space`: {str(file)!r} is not valid YAML: {err}") from err
    if not isinstance(raw, Mapping) or not raw:
        raise ClightConfigError(f"`--space`: {str(file)!r} must map config paths to distributions, e.g. "
                                "`trainer.callbacks.0.init_args.strength: {log_uniform: [0.1, 1000]}`.")
    return [_dimension(str(k), v, file) for k, v in raw.items()]


def _dimension(path: str, spec: Any, file: Path) -> Dimension:
    where = f"`--space` {str(file)!r}, entry {path!r}"
    kinds = [k for k in KINDS if isinstance(spec, Mapping) and k in spec]
    if len(kinds) != 1:
        raise ClightConfigError(f"{where}: give exactly one of {list(KINDS)}, e.g. `{{log_uniform: [0.1, 10]}}`; "
                                f"got {spec!r}.")
    kind, value = kinds[0], spec[kinds[0]]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ClightConfigError(f"{where}: `choice` needs a non-empty list, got {value!r}.")
        return Dimension(path, kind, choices=tuple(value))
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and value[0] < value[1]):
        raise ClightConfigError(f"{where}: `{kind}` needs [low, high] with low < high, got {value!r}.")
    if kind == "log_uniform" and value[0] <= 0:
        raise ClightConfigError(f"{where}: `log_uniform` needs low > 0, got {value!r}.")
    return Dimension(path, kind, float(value[0]), float(value[1]), log=bool(spec.get("log", False)))


def apply(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every ``path: value`` set; a path that the config does not have is an error."""
    out = copy.deepcopy(dict(config))
    for path, value in values.items():
        node: Any = out
        keys = path.split(".")
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ClightConfigError(f"`--space`: {path!r}: the config has no list entry {key!r} there "
                                            f"({len(node)} entries).")
                key = int(key)
            elif not isinstance(node, dict) or (key not in node and not (last or keys[i + 1] == "init_args")):
                raise ClightConfigError(f"`--space`: {path!r}: the config has no {key!r} at "
                                        f"{'.'.join(keys[:i]) or 'the top level'}; check the path against the config.")
            if last:
                node[key] = _plain(value)
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return out


def _plain(value: Any) -> Any:
    """YAML-friendly: floats that are integers stay floats, NaN is refused."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ClightConfigError(f"`--space`: a drawn value is not finite ({value!r}).")
    return value


def value_at(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of ``config`` (list entries by index); ``None`` where the config has none."""
    node: Any = config
    for key in path.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, Mapping) and key in node:
            node = node[key]
        else:
            return None
    return node
