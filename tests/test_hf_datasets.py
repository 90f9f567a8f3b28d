"""Hugging Face `datasets` as a stream's source (`data.dataset`): the same rows give the same stream as
`train_file`/`test_file`, rows stay in memory-mapped Arrow until encoded, and bad specs get one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clight_testing import DOMAINS, LLM, MINILM, ROOT, WORDNET, tiny_stream

from clight.datamodules import TextClassificationStream
from clight.datamodules.hf_source import HFDataset, Rows
from clight.datamodules.io import read_rows
from clight.errors import ClightConfigError

datasets = pytest.importorskip("datasets")

FILES = {"classification": WORDNET, "causal_lm": DOMAINS, "instruction": LLM}
TINY = ROOT / "tests" / "data" / "tiny_classification.yaml"


def _json_source(folder: Path, cache: Path, **extra) -> dict:
    return dict(path="json", data_files={"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
                cache_dir=str(cache), **extra)


def _from_dataset(kind: str, dataset: dict, **kwargs):
    return tiny_stream(kind, train_file=None, test_file=None, dataset=dataset, **kwargs)


def _assert_same_stream(a, b) -> None:
    a.prepare_stream()
    b.prepare_stream()
    assert a.task_names == b.task_names and [t.labels for t in a.tasks] == [t.labels for t in b.tasks]
    assert a.train_examples == b.train_examples and a.test_examples == b.test_examples
    assert a.probe_examples == b.probe_examples
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("kind", ["classification", "causal_lm", "instruction"])
def test_json_through_datasets_gives_the_stream_of_train_file(kind: str, tmp_path: Path) -> None:
    _assert_same_stream(tiny_stream(kind), _from_dataset(kind, _json_source(FILES[kind], tmp_path)))


def _small_rows() -> tuple[list[dict], list[dict]]:
    train, test = read_rows(WORDNET / "train.jsonl", argument="x"), read_rows(WORDNET / "test.jsonl", argument="x")
    keep = ("wordnet-nature", "wordnet-artifacts")
    return ([r for r in train if r["task"] in keep][::8], [r for r in test if r["task"] in keep][::8])


def _write(rows: list[dict], path: Path) -> str:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:  # csv: every field quoted (WordNet glosses hold commas and quotes)
        quote = lambda v: '"' + str(v).replace('"', '""') + '"'  # noqa: E731
        path.write_text("task,label,text\n" + "".join(",".join(quote(r[k]) for k in ("task", "label", "text")) + "\n"
                                                      for r in rows))
    return str(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_parquet_and_csv_through_datasets_read_like_the_files(suffix: str, tmp_path: Path) -> None:
    train_rows, test_rows = _small_rows()
    train, test = _write(train_rows, tmp_path / f"train{suffix}"), _write(test_rows, tmp_path / f"test{suffix}")
    files = tiny_stream(train_file=train, test_file=test, tasks=None)
    hf = _from_dataset("classification", dict(path=suffix[1:], data_files={"train": train, "test": test},
                                              cache_dir=str(tmp_path / "cache")), tasks=None)
    _assert_same_stream(files, hf)
    assert hf.task_names == ["wordnet-nature", "wordnet-artifacts"]


def test_rows_stay_in_memory_mapped_arrow_until_encoded(tmp_path: Path) -> None:
    data = _from_dataset("classification", _json_source(WORDNET, tmp_path))
    tasks, train, test = data._read_tasks()
    assert [t.name for t in tasks] == ["wordnet-nature", "wordnet-artifacts"]
    for rows in train + test:
        assert isinstance(rows, Rows) and not isinstance(rows, list)
        assert isinstance(rows.dataset, datasets.Dataset)
        assert isinstance(rows.dataset.data, datasets.table.MemoryMappedTable)  # not an in-memory copy
    assert [len(r) for r in train] == [480, 480] and [len(r) for r in test] == [160, 160]
    file_rows = [r for r in read_rows(WORDNET / "train.jsonl", argument="x") if r["task"] == "wordnet-artifacts"]
    assert list(train[1]) == file_rows and train[1][3] == file_rows[3] and train[1][-1] == file_rows[-1]
    head = train[1][:5]
    assert isinstance(head, Rows) and list(head) == file_rows[:5]
    assert train[1].values("label") == [r["label"] for r in file_rows]
    assert train[1].row_number(0) == 481  # the row's number in its split, for error messages


def test_a_bad_cell_names_its_row_in_the_split(tmp_path: Path) -> None:
    rows = [{"task": "a", "text": f"word {i}", "label": "x" if i % 2 else "y"} for i in range(6)]
    rows += [{"task": "b", "text": "", "label": "x"}] + [{"task": "b", "text": "w", "label": "y"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = dict(path="json", data_files={"train": str(path), "test": str(path)}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ClightConfigError, match=r"d.jsonl' row 7: column 'text' holds an empty string"):
        TextClassificationStream(dataset=spec, tokenizer=MINILM).prepare_stream()


def _bad(tmp_path: Path, **spec) -> dict:
    return {**_json_source(WORDNET, tmp_path / "cache"), **spec}


BAD = [
    ("two-sources", lambda p: dict(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"),
                                   dataset=_bad(p)), r"given twice: `train_file`/`test_file` and `dataset`"),
    ("task-files-and-dataset", lambda p: dict(dataset=_bad(p), tasks=[{"name": "a", "train": "a.jsonl",
                                                                       "test": "a.jsonl"}]),
     r"given twice: per-task `train`/`test` files in `tasks` and `dataset`"),
    ("missing-split", lambda p: dict(dataset=_bad(p, test_split="validation")),
     r"`data.dataset.test_split`: 'json' has no split 'validation' \(splits found: \['test', 'train'\]\)"),
    ("missing-task-column", lambda p: dict(dataset=_bad(p), task_column="topic"),
     r"`data.task_column`: .*train.jsonl' has no column 'topic'"),
    ("missing-text-column", lambda p: dict(dataset=_bad(p), text_column="body"), r"Set `data.text_column`"),
    ("unknown-task", lambda p: dict(dataset=_bad(p), tasks=[{"name": "nope"}]),
     r"task 'nope' has no rows in `data.dataset` split 'train'"),
    ("hub-name-offline", lambda p: dict(dataset={"path": "clight-tests/no-such-dataset", "cache_dir": str(p)}),
     r"`data.dataset.path`: 'clight-tests/no-such-dataset' .*nothing can be downloaded offline"),
    ("missing-data-file", lambda p: dict(dataset=_bad(p, data_files={"train": str(p / "no.jsonl"),
                                                                      "test": str(p / "no.jsonl")})),
     r"`data.dataset.data_files`: Unable to find .*no.jsonl"),
    ("unreadable-file", lambda p: dict(dataset=_bad(p, data_files={"train": _garbage(p), "test": _garbage(p)})),
     r"`data.dataset`: datasets could not load 'json' \(.*garbage.jsonl"),
    ("not-a-spec", lambda p: dict(dataset={"path": "json", "files": "a.jsonl"}), r"`data.dataset`: .* not a dataset spec"),
]


def _garbage(p: Path) -> str:
    (p / "garbage.jsonl").write_text('{"task": "a", "text": "ok", "label": "x"}\n{oops\n')
    return str(p / "garbage.jsonl")


@pytest.mark.parametrize(("make", "match"), [(m, r) for _, m, r in BAD], ids=[i for i, _, _ in BAD])
def test_bad_dataset_specs_get_a_one_line_error(tmp_path: Path, make, match: str) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and datasets.config.HF_HUB_OFFLINE
    with pytest.raises(ClightConfigError, match=match) as info:
        TextClassificationStream(tokenizer=MINILM, **make(tmp_path)).prepare_stream()
    assert "\n" not in str(info.value)


def test_dataset_without_the_datasets_package_says_which_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    data = TextClassificationStream(tokenizer=MINILM, dataset=HFDataset(**_json_source(WORDNET, tmp_path)))
    with pytest.raises(ClightConfigError, match=r"`data.dataset` needs .*`datasets`.*pip install 'clight\[data\]'"):
        data.prepare_stream()


def test_parquet_without_pyarrow_says_which_extra(tmp_path: Path, monkeypatch) -> None:
    path = _write(_small_rows()[0], tmp_path / "train.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ClightConfigError, match=r"`data.train_file`: .*needs pyarrow.*pip install 'clight\[parquet\]'"):
        TextClassificationStream(train_file=path, test_file=path, tokenizer=MINILM).prepare_stream()


def test_clight_fit_reads_a_dataset_given_on_the_command_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = (f"{{path: json, data_files: {{train: clight/data/wordnet/train.jsonl, test: clight/data/wordnet/test.jsonl}}, "
            f"cache_dir: {tmp_path / 'cache'}}}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "-m", "clight", "fit", "-c", str(TINY), "--data.init_args.train_file", "null",
                           "--data.init_args.test_file", "null", "--data.init_args.dataset", spec,
                           "--trainer.max_steps", "1", "--stream.run_dir", str(run)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"] == ["wordnet-nature", "wordnet-artifacts"]
    assert "data_files:" in (run / "config.yaml").read_text()
    assert "Generating train split" not in proc.stderr


def test_the_run_fingerprint_leaves_out_where_the_dataset_lies() -> None:
    from clight.fingerprint import config_fingerprint

    spec = {"path": "json", "data_files": {"train": "a.jsonl", "test": "b.jsonl"}, "cache_dir": "/c", "name": None,
            "train_split": "train", "test_split": "test"}
    keys = set(config_fingerprint({"data": {"class_path": "S", "init_args": {"dataset": spec}}}))
    assert {"data.init_args.dataset.train_split", "data.init_args.dataset.test_split"} <= keys
    assert not [k for k in keys if k.split(".")[-1] in ("path", "cache_dir") or "data_files" in k]
