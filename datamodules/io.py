"""Read local JSONL / CSV / Parquet files into lists of row dicts, with errors that name the file."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clight.errors import ClightConfigError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: str | Path, *, argument: str) -> list[dict[str, Any]]:
    """Read every row of a local data file.

    Args:
        path: a ``.jsonl`` (one JSON object per line), ``.csv`` (header row) or ``.parquet`` file.
        argument: the config argument that named the file, for error messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise ClightConfigError(
            f"`{argument}`: data file {str(path)!r} does not exist{hint}. Paths are relative to the directory "
            f"you run clight from ({Path.cwd()}); expected a {'/'.join(SUFFIXES)} file."
        )
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (OSError, UnicodeDecodeError) as err:
        raise ClightConfigError(f"`{argument}`: cannot read {str(path)!r}: {err}") from err
    except Exception as err:  # pyarrow raises its own error types for corrupt files
        if suffix == ".parquet":
            raise ClightConfigError(f"`{argument}`: {str(path)!r} is not a readable Parquet file: {err}") from err
        raise
    raise ClightConfigError(
        f"`{argument}`: unsupported file type {suffix!r} for {str(path)!r}; use one of {', '.join(SUFFIXES)}."
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ClightConfigError(
                    f"{str(path)!r} line {lineno}: not valid JSON ({err.msg}); each line must be one JSON object."
                ) from err
            if not isinstance(row, dict):
                raise ClightConfigError(
                    f"{str(path)!r} line {lineno}: expected a JSON object, found {type(row).__name__}."
                )
            rows.append(row)
    return rows


def column(rows: list[dict[str, Any]], name: str, *, path: str, argument: str) -> list[Any]:
    """Values of one column; a clear error when a row lacks it."""
    for i, row in enumerate(rows):
        if name not in row or row[name] is None:
            raise ClightConfigError(
                f"{path!r} row {i + 1} has no column {name!r} (columns found: {sorted(row)}). "
                f"Set `{argument}` to the right column name."
            )
    return [row[name] for row in rows]


def stream_fingerprint(tasks: Sequence[Any], train: Sequence[Sequence[dict[str, Any]]],
                       test: Sequence[Sequence[dict[str, Any]]], *, joint: bool) -> dict[str, Any]:
    """What identifies a stream (task names and labels, sizes, a SHA-1 of every encoded example), so that a
    resume with a different stream is refused."""
    digest = hashlib.sha1()
    for split in (train, test):
        for examples in split:
            for ex in examples:
                digest.update(json.dumps(ex, sort_keys=True, default=str).encode())
    return {
        "tasks": [t.name for t in tasks],
        "labels": [list(t.labels) for t in tasks],
        "joint": joint,
        "sizes": [[len(a), len(b)] for a, b in zip(train, test)],
        "sha1": digest.hexdigest(),
    }
