"""Read local JSONL / CSV / Parquet files into lists of row dicts, with errors that name the file (a
``data.dataset`` source is read lazily instead: :mod:`clight.datamodules.hf_source`)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
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
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ClightConfigError(
                f"`{argument}`: reading the Parquet file {str(path)!r} needs pyarrow, which is not installed; "
                "pip install 'clight[parquet]', or give a .jsonl or .csv file."
            ) from None
    try:
        if suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
        if suffix == ".csv":
            return _read_csv(path, argument)
        if suffix == ".parquet":
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


def _read_csv(path: Path, argument: str) -> list[dict[str, Any]]:
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        try:
            for row in reader:
                if None in row:  # more fields than the header has columns
                    raise ClightConfigError(
                        f"`{argument}`: {str(path)!r} line {reader.line_num} has more fields than the header has "
                        f"columns ({len(reader.fieldnames or [])}); quote fields that contain commas."
                    )
                rows.append(row)
        except csv.Error as err:
            line = reader.reader.line_num  # the line being parsed (the DictReader's counts finished rows)
            if "field larger than field limit" in str(err):
                raise ClightConfigError(
                    f"`{argument}`: {str(path)!r} line {line}: a field is longer than "
                    f"{csv.field_size_limit():,} characters, usually an unclosed quote `\"` that runs into the "
                    "rows after it. Fix the quoting, or keep long texts in a .jsonl or .parquet file."
                ) from None
            raise ClightConfigError(f"`{argument}`: {str(path)!r} line {line}: not valid CSV ({err}).") from None
    return rows


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


def column(rows: Sequence[dict[str, Any]], name: str, *, path: str, argument: str) -> list[Any]:
    """Values of one column; a clear error when a row lacks it or holds null there. ``rows``: a list of row
    dicts, or a lazy view of a ``datasets`` table (``hf_source.Rows``), of which only this column is read."""
    if hasattr(rows, "column_names"):
        if name not in rows.column_names:
            raise ClightConfigError(f"{path!r} has no column {name!r} (columns found: {sorted(rows.column_names)}). "
                                    f"Set `{argument}` to the right column name.")
        values = rows.values(name)
        if None in values:
            raise ClightConfigError(f"{path!r} row {_row(rows, values.index(None))}: column {name!r} is empty (null). "
                                    "Fill it in or remove the row.")
        return values
    for i, row in enumerate(rows):
        if name not in row:
            raise ClightConfigError(
                f"{path!r} row {i + 1} has no column {name!r} (columns found: {sorted(map(str, row))}). "
                f"Set `{argument}` to the right column name."
            )
        if row[name] is None:
            raise ClightConfigError(
                f"{path!r} row {i + 1}: column {name!r} is empty (null). Fill it in or remove the row."
            )
    return [row[name] for row in rows]


def _row(rows: Sequence[Any], i: int) -> int:
    """The 1-based row number of ``rows[i]`` (in its split, for a ``datasets`` view; else in ``rows``)."""
    return rows.row_number(i) if hasattr(rows, "row_number") else i + 1


def _kind(value: Any) -> str | None:
    """What is wrong with a cell that should hold text (None: nothing)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, str) and not value.strip():
        return "an empty string" if not value else "only whitespace"
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return f"a {type(value).__name__}"
    return None


def text_column(rows: Sequence[dict[str, Any]], name: str, *, path: str, argument: str) -> list[str]:
    """The text of one column: every cell a non-empty string (or a number), else a one-line error naming the row
    (an empty cell or a JSON object would otherwise train as ``""`` or ``"{'a': 1}"``)."""
    values = column(rows, name, path=path, argument=argument)
    for i, value in enumerate(values):
        wrong = _kind(value)
        if wrong is not None:
            raise ClightConfigError(
                f"{path!r} row {_row(rows, i)}: column {name!r} holds {wrong}, not text; every {name!r} cell must be a "
                "non-empty string. Fix the row or remove it."
            )
    return [str(v) for v in values]


def label_column(rows: Sequence[dict[str, Any]], name: str, *, path: str, argument: str) -> list[str]:
    """The labels of one column, as strings: every cell a string, a number or a boolean."""
    values = column(rows, name, path=path, argument=argument)
    for i, value in enumerate(values):
        wrong = None if isinstance(value, bool) else _kind(value)
        if wrong is not None:
            raise ClightConfigError(
                f"{path!r} row {_row(rows, i)}: column {name!r} holds {wrong}, not a label; a label is a string or an "
                "integer. Fix the row or remove it."
            )
    return [str(v) for v in values]


def stream_fingerprint(tasks: Sequence[Any], train: Sequence[Sequence[dict[str, Any]]],
                       test: Sequence[Sequence[dict[str, Any]]], *, joint: bool,
                       probes: Sequence[tuple[str, Sequence[dict[str, Any]]]] = (),
                       validation: Sequence[Sequence[dict[str, Any]]] = ()) -> dict[str, Any]:
    """What identifies a stream (task names and labels, sizes, a SHA-1 of every encoded example, the validation
    split's included), so that a resume with a different stream is refused."""
    digest = hashlib.sha1()
    for split in (train, test, [examples for _, examples in probes], validation):
        for examples in split:
            for ex in examples:
                digest.update(json.dumps(ex, sort_keys=True, default=str).encode())
    return {
        "tasks": [t.name for t in tasks],
        "labels": [list(t.labels) for t in tasks],
        "joint": joint,
        "sizes": [[len(a), len(b)] for a, b in zip(train, test)],
        "probes": [name for name, _ in probes],
        "sha1": digest.hexdigest(),
        **({"validation_sizes": [len(v) for v in validation]} if validation else {}),
    }


def read_task_rows(specs: Sequence[Any], train_file: str | None, test_file: str | None, task_column: str
                   ) -> tuple[list[Any], list[list[dict]], list[list[dict]]]:
    """The tasks of a stream and their train and test rows: from one train and one test file with a task column
    (``specs`` select and order the tasks; empty: every task, in order of first appearance), or from the files
    every task of ``specs`` names."""

    if train_file is None:
        for t in specs:
            if not t.train or not t.test:
                raise ClightConfigError(
                    f"task {t.name!r}: needs both `train` and `test` files when `train_file`/`test_file` are not given."
                )
        train = [read_rows(t.train, argument=f"tasks[{t.name}].train") for t in specs]
        test = [read_rows(t.test, argument=f"tasks[{t.name}].test") for t in specs]
        return list(specs), train, test
    train_by = _group(read_rows(train_file, argument="data.train_file"), train_file, task_column)
    test_by = _group(read_rows(test_file, argument="data.test_file"), test_file, task_column)
    return select_tasks(specs, train_by, test_by, source=f"`train_file` {train_file!r}", task_column=task_column)


def select_tasks(specs: Sequence[Any], train_by: dict[str, Any], test_by: dict[str, Any], *, source: str,
                 task_column: str) -> tuple[list[Any], list[Any], list[Any]]:
    """The tasks ``specs`` select (empty: every task of ``train_by``, in order) with their train and test rows."""
    from clight.task import Task

    tasks = list(specs) or [Task(name=n) for n in train_by]
    for t in tasks:
        if t.name not in train_by:
            raise ClightConfigError(
                f"task {t.name!r} has no rows in {source} (tasks found in column "
                f"{task_column!r}: {list(train_by)}). Fix `tasks` or the data."
            )
    return tasks, [train_by[t.name] for t in tasks], [test_by.get(t.name, []) for t in tasks]


def _group(rows: list[dict], path: str, task_column: str) -> dict[str, list[dict]]:
    names = column(rows, task_column, path=path, argument="data.task_column")
    grouped: dict[str, list[dict]] = {}
    for name, row in zip(names, rows):
        grouped.setdefault(str(name), []).append(row)
    if not grouped:
        raise ClightConfigError(f"{path!r} holds no rows; every task needs training examples.")
    return grouped
