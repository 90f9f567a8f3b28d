"""Probes: eval-only tasks of a stream (general abilities of the base model), read from local files."""

from __future__ import annotations

from typing import Any

from clight.datamodules.io import read_rows
from clight.errors import ClightConfigError
from clight.task import Probe

_KIND_COLUMNS = (("choices", "multiple_choice"), ("response", "generation"), ("text", "perplexity"))


def resolve_probes(specs: list[Probe], *, task_column: str, task_names: list[str]
                   ) -> list[tuple[Probe, list[dict[str, Any]]]]:
    """Every probe with its rows and its kind (given, or from the columns: ``choices`` -> multiple choice,
    ``response`` -> generation, ``text`` -> perplexity), with a one-line error for a bad spec or file."""
    names = [p.name for p in specs]
    clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(task_names)))
    if clash:
        raise ClightConfigError(f"`probes`: the names {clash} are used twice (probes and tasks need unique names).")
    out = []
    for probe in specs:
        rows = read_rows(probe.file, argument=f"probes[{probe.name}].file")
        if rows and task_column in rows[0]:
            rows = [r for r in rows if str(r.get(task_column)) == probe.name]
        if not rows:
            raise ClightConfigError(
                f"`probes[{probe.name}]`: {probe.file!r} has no rows for it (rows whose {task_column!r} column is "
                f"{probe.name!r}, or a file without that column). Fix the name or the file.")
        kind = probe.kind or next((k for column, k in _KIND_COLUMNS if column in rows[0]), None)
        if kind is None:
            raise ClightConfigError(
                f"`probes[{probe.name}]`: cannot tell its kind from the columns {sorted(rows[0])} of {probe.file!r}; "
                "give `kind: multiple_choice` (prompt, choices, answer), `generation` (prompt, response) or "
                "`perplexity` (text).")
        if probe.max_examples is not None and probe.max_examples < 1:
            raise ClightConfigError(f"`probes[{probe.name}].max_examples` must be >= 1 or empty, got {probe.max_examples}.")
        out.append((Probe(name=probe.name, file=probe.file, kind=kind, max_examples=probe.max_examples), rows))
    return out
