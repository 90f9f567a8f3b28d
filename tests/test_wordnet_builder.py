"""The committed WordNet stream (clight/data/wordnet) is exactly what tools/data/build_wordnet_stream.py builds."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILDER_PATH = REPO_ROOT / "tools" / "data" / "build_wordnet_stream.py"
COMMITTED_DIR = REPO_ROOT / "clight" / "data" / "wordnet"
WORDNET_DIR = Path("/usr/share/wordnet")
COMPARED_FILES = ("train.jsonl", "test.jsonl", "tasks.json")

pytestmark = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason="WordNet 3.0 database not installed (apt-get install wordnet-base)",
)


def load_builder() -> ModuleType:
    """Import tools/data/build_wordnet_stream.py by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_wordnet_stream", BUILDER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wordnet")
    load_builder().main(["--wordnet-dir", str(WORDNET_DIR), "--out", str(out)])
    return out


@pytest.mark.parametrize("name", COMPARED_FILES)
def test_build_matches_committed_files(built_dir: Path, name: str) -> None:
    assert (built_dir / name).read_bytes() == (COMMITTED_DIR / name).read_bytes(), (
        f"{name} differs from the committed copy; rebuild with "
        "`python tools/data/build_wordnet_stream.py --out clight/data/wordnet`"
    )


def test_stream_shape(built_dir: Path) -> None:
    tasks = json.loads((built_dir / "tasks.json").read_text(encoding="utf-8"))
    assert len(tasks) == 5
    assert all(len(task["labels"]) == 4 for task in tasks)
    labels = [label for task in tasks for label in task["labels"]]
    assert len(set(labels)) == 20
    task_of = {label: task["name"] for task in tasks for label in task["labels"]}

    splits = {split: read_jsonl(built_dir / f"{split}.jsonl") for split in ("train", "test")}
    for split, per_class in (("train", 120), ("test", 40)):
        rows = splits[split]
        assert all(list(row) == ["task", "label", "text"] for row in rows)
        assert all(task_of[row["label"]] == row["task"] for row in rows)
        assert Counter(row["label"] for row in rows) == dict.fromkeys(labels, per_class)
        # Grouped by task in stream order, then by label in tasks.json order.
        order = [row["label"] for row in rows]
        assert order == [label for label in labels for _ in range(per_class)]
        texts = [row["text"] for row in rows]
        assert len(set(texts)) == len(texts), f"duplicate texts in {split}"

    train_texts = {row["text"] for row in splits["train"]}
    test_texts = {row["text"] for row in splits["test"]}
    assert not train_texts & test_texts


def test_the_tuning_stream_is_rebuilt_and_shares_no_category_or_text_with_the_main_stream(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    load_builder().main(["--wordnet-dir", str(WORDNET_DIR), "--out", str(out), "--stream", "tune",
                         "--train-per-class", "80", "--test-per-class", "40"])
    committed = REPO_ROOT / "clight" / "data" / "wordnet_tune"
    for name in (*COMPARED_FILES, "README.md", "LICENSE"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    main = {label for task in json.loads((COMMITTED_DIR / "tasks.json").read_text()) for label in task["labels"]}
    tune = {label for task in json.loads((committed / "tasks.json").read_text()) for label in task["labels"]}
    assert len(tune) == 12 and not main & tune
    main_texts = {row["text"] for split in ("train", "test") for row in read_jsonl(COMMITTED_DIR / f"{split}.jsonl")}
    assert not main_texts & {row["text"] for row in read_jsonl(committed / "train.jsonl")}
