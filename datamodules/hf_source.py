"""Hugging Face ``datasets`` as a stream's source (``data.dataset``): local json/csv/parquet files or a dataset
folder, or a hub name where the dataset is in the local cache (or the hub can be reached).

``datasets`` converts the files once into Arrow files in its cache and memory-maps them, so the raw corpus is
not held in RAM as Python objects: the rows are grouped by reading the task column only, each task becomes a
``Dataset.select`` view (:class:`Rows`), and the encoders read a view one column (or one batch of rows) at a
time, so at most one task's column is a Python list at once. What
:meth:`~clight.datamodules.ContinualDataModule.prepare_stream` builds from them (the encoded examples of every
task) still lives in RAM, as it does for ``train_file``; so does the training text of the whole stream while a
``train_tokenizer_vocab`` tokenizer is trained.

Types are Arrow's: a CSV column of numbers only is read as numbers (``007`` -> ``7``), where ``train_file``
reads every CSV cell as text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clight.datamodules.io import select_tasks
from clight.errors import ClightConfigError

ARGUMENT = "data.dataset"
BATCH = 1024  # rows decoded at a time when a view is iterated
EXTRA = "pip install 'clight[data]'"


@dataclass(frozen=True)
class HFDataset:
    """Where ``datasets.load_dataset`` finds a stream (``data.dataset``); both splits hold a ``task_column``.

    Args:
        path: ``json``, ``csv`` or ``parquet`` (with ``data_files``), a local dataset folder, or a hub name
            (offline, ``HF_HUB_OFFLINE=1``: only one already in the local ``datasets`` cache).
        data_files: split name -> local file(s) or glob pattern(s), e.g. ``{train: a.jsonl, test: b.jsonl}``.
        name: the dataset's configuration (subset), for a hub dataset that has several.
        data_dir: a folder of the dataset to read (``load_dataset``'s ``data_dir``).
        revision: the hub revision (branch, tag or commit).
        train_split: the split trained on.
        test_split: the split evaluated on.
        cache_dir: where ``datasets`` keeps its Arrow files; empty: its default (``HF_DATASETS_CACHE``).
    """

    path: str
    data_files: dict[str, str | list[str]] | None = None
    name: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    cache_dir: str | None = None

    def where(self, split: str) -> str:
        """How error messages name the ``train`` or ``test`` split: its data file(s), or ``path[split]``."""
        name = self.train_split if split == "train" else self.test_split
        files = (self.data_files or {}).get(name)
        if files:
            return files if isinstance(files, str) else ", ".join(files)
        return f"{self.path}[{name}]"


def as_spec(value: Any) -> HFDataset | None:
    """``data.dataset`` as an :class:`HFDataset` (a dict from Python code is converted, with a one-line error)."""
    if value is None or isinstance(value, HFDataset):
        return value
    if not isinstance(value, dict):
        raise ClightConfigError(f"`{ARGUMENT}`: expected a mapping such as {{path: json, data_files: {{train: ..., "
                                f"test: ...}}}}, found {type(value).__name__} {value!r}.")
    try:
        return HFDataset(**value)
    except TypeError as err:
        raise ClightConfigError(f"`{ARGUMENT}`: {value!r} is not a dataset spec ({err}); it takes `path` and "
                                "optionally `data_files`, `name`, `data_dir`, `revision`, `train_split`, "
                                "`test_split`, `cache_dir`.") from None


class Rows(Sequence):
    """One task's rows of a split: a ``datasets.Dataset`` view (memory-mapped Arrow), read lazily. What the
    encoders take in place of a list of row dicts: ``len``, indexing and slicing (a smaller view), iteration
    (one batch of rows decoded at a time), and :meth:`values` (one column)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset  # datasets.Dataset, already narrowed to the task's rows
        self.indices = indices  # each row's index in its split, for error messages

    @property
    def column_names(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            picked = range(len(self))[i]
            return Rows(self.dataset.select(picked), [self.indices[j] for j in picked])
        return dict(self.dataset[range(len(self))[i]])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.dataset.iter(batch_size=BATCH):
            keys = list(batch)
            for values in zip(*batch.values()):
                yield dict(zip(keys, values))

    def values(self, name: str) -> list[Any]:
        """Every value of one column (the only one read from the Arrow table)."""
        return self.dataset.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()

    def row_number(self, i: int) -> int:
        """The 1-based number of ``self[i]`` among the rows of its split."""
        return self.indices[i] + 1


def load_splits(spec: HFDataset) -> tuple[Any, Any]:
    """The train and test ``datasets.Dataset`` of ``spec``, with one-line errors for a missing ``datasets``, an
    unreachable or unknown dataset, missing files and a missing split."""
    try:
        import datasets
    except ImportError:
        raise ClightConfigError(f"`{ARGUMENT}` needs the Hugging Face `datasets` package, which is not installed: "
                                f"{EXTRA}, or give `train_file`/`test_file` instead.") from None
    from datasets import utils as ds_utils

    bars, verbosity = not ds_utils.are_progress_bars_disabled(), ds_utils.logging.get_verbosity()
    ds_utils.disable_progress_bars()  # "Generating train split" bars would cut into clight's output, and a bad
    ds_utils.logging.set_verbosity(ds_utils.logging.CRITICAL)  # file is reported below, in one line
    try:
        loaded = datasets.load_dataset(spec.path, spec.name, data_files=spec.data_files, data_dir=spec.data_dir,
                                       revision=spec.revision, cache_dir=spec.cache_dir)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ClightConfigError(_unreachable(spec, err, datasets.config.HF_HUB_OFFLINE)) from None
    except FileNotFoundError as err:
        where = f"{ARGUMENT}.data_files" if spec.data_files else f"{ARGUMENT}.path"
        raise ClightConfigError(f"`{where}`: {_first_line(err)}. Paths are relative to the "
                                "directory you run clight from.") from None
    except Exception as err:  # noqa: BLE001 (a bad file or spec: datasets and pyarrow raise many kinds)
        while err.__cause__ is not None:  # datasets wraps the reader's error (a DatasetGenerationError)
            err = err.__cause__
        files = f" ({', '.join(spec.where(s) for s in ('train', 'test'))})" if spec.data_files else ""
        raise ClightConfigError(f"`{ARGUMENT}`: datasets could not load {spec.path!r}{files}: "
                                f"{type(err).__name__}: {_first_line(err)}. Fix the data or the spec.") from None
    finally:
        ds_utils.logging.set_verbosity(verbosity)
        if bars:
            ds_utils.enable_progress_bars()
    if not isinstance(loaded, datasets.DatasetDict):
        raise ClightConfigError(f"`{ARGUMENT}`: {spec.path!r} loaded as a single {type(loaded).__name__}, not "
                                "named splits; give `data_files` as a mapping {train: ..., test: ...}.")
    for key in ("train_split", "test_split"):
        split = getattr(spec, key)
        if split not in loaded:
            raise ClightConfigError(f"`{ARGUMENT}.{key}`: {spec.path!r} has no split {split!r} (splits found: "
                                    f"{sorted(loaded)}). Set `{ARGUMENT}.{key}` to one of them.")
    return loaded[spec.train_split], loaded[spec.test_split]


def _unreachable(spec: HFDataset, err: Exception, offline: bool) -> str:
    if offline:
        return (f"`{ARGUMENT}.path`: {spec.path!r} is neither a local folder nor a dataset in the local `datasets` "
                "cache, and nothing can be downloaded offline (HF_HUB_OFFLINE=1). Pass local files "
                "(`path: json`, `data_files: {train: ..., test: ...}`), or pre-download the dataset.")
    return (f"`{ARGUMENT}.path`: cannot load {spec.path!r} from the hub ({_first_line(err)}). Check the name, "
            "or pass local files (`path: json`, `data_files: {train: ..., test: ...}`).")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def group(dataset: Any, task_column: str, where: str) -> dict[str, Rows]:
    """Rows of one split by task, in order of first appearance; only the task column is read into Python."""
    if task_column not in dataset.column_names:
        raise ClightConfigError(
            f"`data.task_column`: {where!r} has no column {task_column!r} (columns found: "
            f"{sorted(dataset.column_names)}). Set `data.task_column` to the column that names each row's task."
        )
    names = Rows(dataset, range(len(dataset))).values(task_column)
    by_task: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name is None:
            raise ClightConfigError(f"{where!r} row {i + 1}: column {task_column!r} is empty (null). Fill it in or "
                                    "remove the row.")
        by_task.setdefault(str(name), []).append(i)
    return {name: Rows(dataset.select(indices), indices) for name, indices in by_task.items()}


def read_dataset_tasks(spec: HFDataset, specs: Sequence[Any], task_column: str
                       ) -> tuple[list[Any], list[Rows], list[Rows]]:
    """The tasks of a ``data.dataset`` stream (``specs`` select and order them; empty: every task of the train
    split) with their train and test rows, as lazy :class:`Rows` views."""
    train, test = load_splits(spec)
    train_by = group(train, task_column, spec.where("train"))
    if not train_by:
        raise ClightConfigError(f"{spec.where('train')!r} holds no rows; every task needs training examples.")
    test_by = group(test, task_column, spec.where("test"))
    empty = Rows(test.select([]), [])
    tasks, train_rows, test_rows = select_tasks(specs, train_by, test_by, task_column=task_column,
                                                source=f"`{ARGUMENT}` split {spec.train_split!r}")
    return tasks, train_rows, [rows if isinstance(rows, Rows) else empty for rows in test_rows]
