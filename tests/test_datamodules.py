"""Task streams: file formats, label sets, the resumable sampler and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from clight_testing import INSTRUCT, MINILM, WORDNET, tiny_stream

from clight.datamodules import InstructionStream, TextClassificationStream
from clight.datamodules.sampling import ResumableBatchSampler
from clight.errors import ClightConfigError


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS_A = [{"text": f"alpha example {i}", "label": "x" if i % 2 else "y"} for i in range(6)]
ROWS_B = [{"text": f"beta example {i}", "label": "x" if i % 2 else "y"} for i in range(6)]


def _per_task_stream(tmp_path: Path, rows_b=ROWS_B, **kwargs) -> TextClassificationStream:
    tasks = [
        {"name": "a", "train": _write_jsonl(tmp_path / "a_train.jsonl", ROWS_A), "test": _write_jsonl(tmp_path / "a_test.jsonl", ROWS_A)},
        {"name": "b", "train": _write_jsonl(tmp_path / "b_train.jsonl", rows_b), "test": _write_jsonl(tmp_path / "b_test.jsonl", ROWS_B)},
    ]
    return TextClassificationStream(tasks=tasks, tokenizer=MINILM, **kwargs)


def test_wordnet_stream_has_five_tasks_of_four_classes() -> None:
    data = TextClassificationStream(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"),
                                    tokenizer=MINILM)
    data.prepare_stream()
    assert len(data.tasks) == 5 and data.num_classes == 20
    assert data.task_classes[1] == [4, 5, 6, 7]
    assert [len(x) for x in data.train_examples] == [480] * 5
    assert [len(x) for x in data.test_examples] == [160] * 5


def test_per_task_files_and_domain_incremental_share_one_label_space(tmp_path: Path) -> None:
    data = _per_task_stream(tmp_path, scenario="domain_incremental")
    data.prepare_stream()
    assert data.classes == ["y", "x"] and data.task_classes == [[0, 1], [0, 1]]


def test_domain_incremental_rejects_different_label_sets(tmp_path: Path) -> None:
    rows = [{"text": "t", "label": "z"}]
    with pytest.raises(ClightConfigError, match="domain_incremental"):
        _per_task_stream(tmp_path, rows_b=rows, scenario="domain_incremental").prepare_stream()


def test_csv_and_parquet_files_read_like_jsonl(tmp_path: Path) -> None:
    rows = [{"task": "t1", "text": f"w{i}", "label": str(i % 2)} for i in range(4)]
    (tmp_path / "d.csv").write_text("task,text,label\n" + "".join(f"{r['task']},{r['text']},{r['label']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        data = TextClassificationStream(train_file=str(tmp_path / name), test_file=str(tmp_path / name), tokenizer=MINILM)
        data.prepare_stream()
        assert data.task_names == ["t1"] and len(data.train_examples[0]) == 4


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: TextClassificationStream(train_file=str(p / "nope.jsonl"), test_file=str(p / "nope.jsonl"), tokenizer=MINILM), "does not exist"),
        (lambda p: TextClassificationStream(train_file=_bad_json(p), test_file=_bad_json(p), tokenizer=MINILM), "line 2: not valid JSON"),
        (lambda p: TextClassificationStream(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"), tokenizer=MINILM, label_column="category"), "no column 'category'"),
        (lambda p: TextClassificationStream(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"), tokenizer=MINILM, tasks=[{"name": "wordnet-nature", "labels": ["noun.animal", "noun.plant"]}]), "not in the label set"),
        (lambda p: TextClassificationStream(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"), tokenizer=MINILM, tasks=[{"name": "no-such-task"}]), "has no rows"),
        (lambda p: TextClassificationStream(train_file=_empty(p), test_file=_empty(p), tokenizer=MINILM), "holds no rows"),
        (lambda p: TextClassificationStream(train_file=str(p / "x.txt"), test_file=str(p / "x.txt"), tokenizer=MINILM), "unsupported file type"),
        (lambda p: TextClassificationStream(train_file=str(WORDNET / "train.jsonl"), test_file=str(WORDNET / "test.jsonl"), tokenizer=str(p / "missing-tok")), "tokenizer folder"),
    ],
    ids=["missing-file", "bad-json", "missing-column", "label-not-in-set", "unknown-task", "empty-file", "bad-suffix", "missing-tokenizer"],
)
def test_bad_data_gets_a_clear_error(tmp_path: Path, make, match: str) -> None:
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(ClightConfigError, match=match):
        make(tmp_path).prepare_stream()


def _bad_json(p: Path) -> str:
    (p / "bad.jsonl").write_text('{"task": "a", "text": "ok", "label": "x"}\n{"task": "a", "text": oops}\n')
    return str(p / "bad.jsonl")


def _empty(p: Path) -> str:
    (p / "empty.jsonl").write_text("")
    return str(p / "empty.jsonl")


def test_duplicate_task_names_and_bad_sizes_are_rejected_in_init() -> None:
    with pytest.raises(ClightConfigError, match="duplicate task names"):
        TextClassificationStream(tasks=[{"name": "a", "train": "x", "test": "y"}, {"name": "a", "train": "x", "test": "y"}])
    with pytest.raises(ClightConfigError, match="`batch_size` must be >= 1"):
        tiny_stream(batch_size=0)
    with pytest.raises(ClightConfigError, match="`train_file` and `test_file` go together"):
        TextClassificationStream(train_file="a.jsonl")


def test_an_empty_task_is_rejected(tmp_path: Path) -> None:
    data = _per_task_stream(tmp_path)
    (tmp_path / "b_train.jsonl").write_text("")
    with pytest.raises(ClightConfigError, match="task 'b'"):
        data.prepare_stream()


def test_instruction_stream_masks_the_prompt_out_of_the_loss() -> None:
    data = InstructionStream(train_file=str(INSTRUCT / "train.jsonl"), test_file=str(INSTRUCT / "test.jsonl"),
                             train_tokenizer_vocab=512, max_length=64, eval_max_examples=8)
    data.prepare_stream()
    assert data.task_names == ["define-nouns", "define-verbs", "antonyms-adjectives"]
    ex = data.train_examples[0][0]
    prompt_len = ex["labels"].index(next(x for x in ex["labels"] if x != -100))
    assert prompt_len > 3 and ex["labels"][prompt_len:] == ex["input_ids"][prompt_len:]
    assert ex["labels"][-1] == data.tokenizer.eos_token_id
    batch = data.collate(data.train_examples[0][:3])
    assert (batch["labels"][0, :prompt_len] == -100).all() and (batch["labels"][0, prompt_len:len(ex["labels"])] >= 0).all()


def test_causal_lm_blocks_have_the_requested_length() -> None:
    data = tiny_stream("causal_lm", max_length=32)
    data.prepare_stream()
    lengths = {len(ex["input_ids"]) for ex in data.train_examples[0]}
    assert max(lengths) == 32 and len(data.tokenizer) == 384


def test_sampler_is_deterministic_shards_ranks_and_skips_on_resume() -> None:
    full = list(ResumableBatchSampler(10, 3, shuffle=True, seed=1, task_index=2))
    assert full == list(ResumableBatchSampler(10, 3, shuffle=True, seed=1, task_index=2))
    assert full != list(ResumableBatchSampler(10, 3, shuffle=True, seed=1, task_index=2, epoch=1))
    assert sorted(i for b in full for i in b) == list(range(10))
    resumed = list(ResumableBatchSampler(10, 3, shuffle=True, seed=1, task_index=2, skip_fn=lambda: 2))
    assert resumed == full[2:]
    r0 = [i for b in ResumableBatchSampler(10, 2, shuffle=True, rank=0, world_size=2) for i in b]
    r1 = [i for b in ResumableBatchSampler(10, 2, shuffle=True, rank=1, world_size=2) for i in b]
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 5
    sampler = ResumableBatchSampler(10, 3, shuffle=True)
    sampler.sampler.set_epoch(4)  # Lightning reaches set_epoch through `batch_sampler.sampler`
    assert sampler.epoch == 4


def test_eval_sample_is_fixed_and_bounded() -> None:
    a, b = tiny_stream(eval_max_examples=5), tiny_stream(eval_max_examples=5)
    a.prepare_stream()
    b.prepare_stream()
    assert [len(x) for x in a.test_examples] == [5, 5]
    assert a.test_examples == b.test_examples
    assert torch.equal(a.collate(a.test_examples[0])["input_ids"], b.collate(b.test_examples[0])["input_ids"])
