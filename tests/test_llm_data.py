"""The committed LLM stream and probes (clight/data/llm) are well formed and are what
tools/data/build_llm_stream.py builds.  No model is loaded."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILDER_PATH = REPO_ROOT / "tools" / "data" / "build_llm_stream.py"
DATA_DIR = REPO_ROOT / "clight" / "data" / "llm"
BUILT_FILES = (
    "train.jsonl",
    "test.jsonl",
    "probes.jsonl",
    "tasks.json",
    "probes.json",
    "LICENSE",
    "README.md",
)

STREAM_TASKS = ["man-commands", "hypernyms", "antonyms", "adjective-attributes"]
WORDNET_TASKS = STREAM_TASKS[1:]
PROBES = {"word-meaning": "multiple-choice", "city-country": "multiple-choice", "city-country-open": "generation",
          "prose-ppl": "perplexity"}  # fmt: skip
CITY_PROMPT = re.compile(r"In which country is the city of (.+)\?(?: Answer with the country name only\.)?")
SIZES = {"train": 160, "test": 40}
QUOTED = re.compile(r'"([^"]+)"')
BACKTICKED = re.compile(r"`([^`]+)`")


def load_builder() -> ModuleType:
    """Import tools/data/build_llm_stream.py by path (tools/ is not a package) for its constants."""
    spec = importlib.util.spec_from_file_location("build_llm_stream", BUILDER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict[str, Any]]]:
    return {split: read_jsonl(DATA_DIR / f"{split}.jsonl") for split in SIZES}


@pytest.fixture(scope="module")
def probes() -> dict[str, list[dict[str, Any]]]:
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read_jsonl(DATA_DIR / "probes.jsonl"):
        by_task[row["task"]].append(row)
    return dict(by_task)


def stream_vocabulary(splits: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Words, answers and commands of the stream (case-folded)."""
    words: set[str] = set()
    for rows in splits.values():
        for row in rows:
            if row["task"] == "man-commands":
                words.update(name.casefold() for name in BACKTICKED.findall(row["prompt"]))
            else:
                words.update(word.casefold() for word in QUOTED.findall(row["prompt"]))
                words.add(row["response"].casefold())
    return words


def probe_word(row: dict[str, Any]) -> str:
    if row["task"].startswith("city-country"):
        match = CITY_PROMPT.fullmatch(row["prompt"])
        assert match, row
        return match.group(1)
    return QUOTED.findall(row["prompt"])[0]


# --------------------------------------------------------------------------- stream


def test_declared_tasks_and_probes() -> None:
    tasks = json.loads((DATA_DIR / "tasks.json").read_text(encoding="utf-8"))
    assert tasks == [{"name": name} for name in STREAM_TASKS]
    probe_info = json.loads((DATA_DIR / "probes.json").read_text(encoding="utf-8"))
    assert [(p["name"], p["kind"]) for p in probe_info] == list(PROBES.items())
    for name in ("LICENSE", "README.md"):
        assert (DATA_DIR / name).stat().st_size > 0


def test_stream_rows_and_sizes(splits: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in splits.items():
        assert all(list(row) == ["task", "prompt", "response"] for row in rows)
        assert all(isinstance(row["prompt"], str) and isinstance(row["response"], str) for row in rows)
        # Grouped by task in stream order.
        assert [row["task"] for row in rows] == [task for task in STREAM_TASKS for _ in range(SIZES[split])]
        for row in rows:
            assert row["prompt"].strip() and row["response"].strip()
            assert len(row["prompt"]) <= 120, row
            assert len(row["response"]) <= 80 and len(row["response"].split()) <= 14, row
        prompts = [row["prompt"].casefold() for row in rows]
        assert len(set(prompts)) == len(prompts), f"duplicate prompts in {split}"


def test_wordnet_answers_are_one_word_or_short_phrase(splits: dict[str, list[dict[str, Any]]]) -> None:
    for rows in splits.values():
        for row in rows:
            if row["task"] in ("antonyms", "adjective-attributes"):
                assert re.fullmatch(r"[a-z]+", row["response"]), row
            elif row["task"] == "hypernyms":
                assert len(row["response"].split()) <= 3, row


def test_train_and_test_are_disjoint(splits: dict[str, list[dict[str, Any]]]) -> None:
    train, test = splits["train"], splits["test"]
    assert not {r["prompt"].casefold() for r in train} & {r["prompt"].casefold() for r in test}
    # Both directions of an antonym pair live in one split.
    train_adjectives = {QUOTED.findall(r["prompt"])[0] for r in train if r["task"] == "antonyms"}
    for row in test:
        if row["task"] == "antonyms":
            assert row["response"] not in train_adjectives, row
    # Commands with the same man-page summary (ls / dir / vdir) share a split.
    summaries = {split: {r["response"].casefold() for r in rows if r["task"] == "man-commands"}
                 for split, rows in splits.items()}  # fmt: skip
    assert not summaries["train"] & summaries["test"]


# --------------------------------------------------------------------------- probes


def test_probe_sizes(probes: dict[str, list[dict[str, Any]]]) -> None:
    probe_info = json.loads((DATA_DIR / "probes.json").read_text(encoding="utf-8"))
    assert {p["name"]: len(probes[p["name"]]) for p in probe_info} == {
        p["name"]: p["size"] for p in probe_info
    }
    assert set(probes) == set(PROBES)
    for name, kind in PROBES.items():
        if kind == "multiple-choice":
            assert 100 <= len(probes[name]) <= 200
    assert 30 <= len(probes["city-country-open"]) <= 200
    assert 80 <= len(probes["prose-ppl"]) <= 200


def test_multiple_choice_rows(probes: dict[str, list[dict[str, Any]]]) -> None:
    for name, kind in PROBES.items():
        if kind != "multiple-choice":
            continue
        rows = probes[name]
        for row in rows:
            assert list(row) == ["task", "prompt", "choices", "answer"]
            assert len(row["choices"]) == 4
            assert len({choice.casefold() for choice in row["choices"]}) == 4, row
            assert all(isinstance(choice, str) and choice.strip() for choice in row["choices"])
            assert isinstance(row["answer"], int) and 0 <= row["answer"] < 4
        positions = Counter(row["answer"] for row in rows)
        assert max(positions.values()) - min(positions[i] for i in range(4)) <= 1, f"{name}: {positions}"
        prompts = [row["prompt"] for row in rows]
        assert len(set(prompts)) == len(prompts), f"duplicate items in {name}"


def test_string_and_text_probes(probes: dict[str, list[dict[str, Any]]]) -> None:
    countries = {row["choices"][row["answer"]] for row in probes["city-country"]}
    for row in probes["city-country-open"]:
        assert list(row) == ["task", "prompt", "response"]
        assert row["response"].strip() and probe_word(row)
    assert {row["response"] for row in probes["city-country-open"]} & countries  # same kind of answers
    mc_cities = {probe_word(row) for row in probes["city-country"]}
    assert not mc_cities & {probe_word(row) for row in probes["city-country-open"]}
    texts = [row["text"] for row in probes["prose-ppl"]]
    assert all(list(row) == ["task", "text"] for row in probes["prose-ppl"])
    assert all(200 <= len(text) <= 600 for text in texts)
    assert len(set(texts)) == len(texts)


def test_probes_share_no_word_with_the_stream(
    splits: dict[str, list[dict[str, Any]]], probes: dict[str, list[dict[str, Any]]]
) -> None:
    vocabulary = stream_vocabulary(splits)
    for name in ("word-meaning", "city-country", "city-country-open"):
        words = [probe_word(row).casefold() for row in probes[name]]
        assert len(set(words)) == len(words), f"{name} repeats a word"
        assert not set(words) & vocabulary, f"{name} shares {sorted(set(words) & vocabulary)} with the stream"
    stream_prompts = {row["prompt"] for rows in splits.values() for row in rows}
    assert not stream_prompts & {row.get("prompt") for rows in probes.values() for row in rows}


# --------------------------------------------------------------------------- rebuild


def missing_sources(builder: ModuleType) -> list[str]:
    missing = [
        str(p)
        for p in (builder.WORDNET_DIR / "data.noun", builder.ZONE_TAB, builder.ISO_3166_1)
        if not p.is_file()
    ]
    missing += [
        str(builder.FORTUNE_DIR / name)
        for name in builder.FORTUNE_FILES
        if not (builder.FORTUNE_DIR / name).is_file()
    ]
    missing += [f"package {pkg}" for pkg in builder.MAN_PACKAGES if builder.dpkg_list_file(pkg) is None]
    missing += [
        f"copyright of {pkg}"
        for pkg in builder.COPYRIGHT_PACKAGES
        if not builder.copyright_file(pkg).is_file()
    ]
    if shutil.which("groff") is None:
        missing.append("groff")
    return missing


def recorded_versions() -> dict[str, str]:
    """The package versions listed under "Built from" in the committed README."""
    text = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^- `([^`]+)` (\S+)$", text, flags=re.M))


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder = load_builder()
    missing = missing_sources(builder)
    if missing:
        pytest.skip(
            f"Debian sources missing ({', '.join(missing[:4])}...); apt-get install -y "
            + " ".join(builder.SOURCE_PACKAGES)
        )
    installed, recorded = builder.package_versions(), recorded_versions()
    if installed != recorded:
        differ = sorted(p for p in set(installed) | set(recorded) if installed.get(p) != recorded.get(p))
        pytest.skip(f"installed Debian package versions differ from the committed build: {differ}")
    out = tmp_path_factory.mktemp("llm-data")
    result = subprocess.run(
        [sys.executable, str(BUILDER_PATH), "--out-root", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return out / "llm"


@pytest.mark.parametrize("name", BUILT_FILES)
def test_rebuild_matches_committed_files(rebuilt: Path, name: str) -> None:
    assert (rebuilt / name).read_bytes() == (DATA_DIR / name).read_bytes(), (
        f"{name} differs from the committed copy; rebuild with `python tools/data/build_llm_stream.py`"
    )
