"""Build the committed WordNet continual-learning stream under ``clight/data/wordnet/``.

The stream is five text-classification tasks of four WordNet lexicographer
categories each (20 classes).  Every example is one WordNet 3.0 synset rendered as
``"<lemma>: <definition>"`` and labelled with its lexicographer file name
(``noun.animal``, ``verb.motion``, ...).

The WordNet database files (``data.noun``, ``data.verb``; format in ``wndb(5WN)``)
are parsed directly; no NLTK or network access is needed.  On Debian/Ubuntu they
come from the ``wordnet-base`` package (``apt-get install wordnet-base``).

Selection is deterministic: after cleaning and de-duplication, the candidates of
each class are ordered by ``sha1(f"{seed}\\x00{text}")`` and the first
``train_per_class`` go to train, the next ``test_per_class`` to test.  Running the
script twice gives byte-identical files.

Usage::

    python tools/data/build_wordnet_stream.py --out clight/data/wordnet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEBIAN_COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")
DATA_FILES = ("data.noun", "data.verb")

# lex_filenum -> lexicographer file name, in the order of lexnames(5WN).
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)  # fmt: skip

# Stream order: (task name, its four lexicographer categories).
TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("wordnet-nature", ("noun.animal", "noun.plant", "noun.food", "noun.body")),
    ("wordnet-artifacts", ("noun.artifact", "noun.substance", "noun.object", "noun.location")),
    ("wordnet-verbs-physical", ("verb.motion", "verb.contact", "verb.consumption", "verb.body")),
    ("wordnet-people-society", ("noun.person", "noun.group", "noun.communication", "noun.possession")),
    ("wordnet-verbs-mental", ("verb.cognition", "verb.communication", "verb.emotion", "verb.perception")),
)

# The tuning stream of the hyperparameter protocol (`clight tune`): categories the stream above does not use, so that
# settings chosen on it are then evaluated on data the tuning never saw.
TUNE_TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tune-abstract", ("noun.act", "noun.attribute", "noun.state", "noun.event")),
    ("tune-mind", ("noun.cognition", "noun.feeling", "noun.time", "noun.quantity")),
    ("tune-verbs", ("verb.change", "verb.creation", "verb.social", "verb.possession")),
)
STREAMS = {"main": TASKS, "tune": TUNE_TASKS}

OUTPUT_SPLITS = ("train", "test")


class Synset(NamedTuple):
    """One parsed synset: its category, first lemma and definition."""

    label: str
    lemma: str
    definition: str

    @property
    def text(self) -> str:
        return f"{self.lemma}: {self.definition}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wordnet-dir",
        type=Path,
        default=DEFAULT_WORDNET_DIR,
        help="directory holding WordNet 3.0 data.noun/data.verb (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory, e.g. clight/data/wordnet")
    parser.add_argument("--stream", choices=sorted(STREAMS), default="main",
                        help="main: the quickstart stream; tune: the tuning stream of other categories")
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument(
        "--seed", type=int, default=0, help="salt of the sha1 ordering (default: %(default)s)"
    )
    return parser.parse_args(argv)


def check_wordnet_dir(wordnet_dir: Path) -> None:
    """Exit with an actionable message when the WordNet database files are missing."""
    missing = [name for name in DATA_FILES if not (wordnet_dir / name).is_file()]
    if missing:
        sys.exit(
            f"error: WordNet 3.0 database files {missing} not found in {wordnet_dir}.\n"
            "Install them with `apt-get install wordnet-base` (Debian/Ubuntu) "
            "or pass --wordnet-dir pointing at a WordNet 3.0 'dict' directory."
        )


# Start of the first quoted usage example: usually '; "', sometimes ', "', ': "' or ', e.g., "'.
EXAMPLE_START = re.compile(r'\s*[;:,]\s*(?:e\.g\.,?\s*)?"')


def extract_definition(gloss: str) -> str:
    """Keep the definition of a gloss, dropping the quoted usage examples after it."""
    return EXAMPLE_START.split(gloss, maxsplit=1)[0].strip().rstrip(";:, ")


def parse_data_line(line: str) -> Synset | None:
    """Parse one ``data.*`` line (see wndb(5WN)); ``None`` for header or gloss-less lines."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    lex_filenum = int(parts[1])
    word_count = int(parts[3], 16)  # w_cnt is two hex digits
    if word_count < 1:
        return None
    lemma = parts[4].replace("_", " ")
    definition = extract_definition(gloss)
    if not definition:
        return None
    return Synset(label=LEXNAMES[lex_filenum], lemma=lemma, definition=definition)


def read_synsets(wordnet_dir: Path) -> list[Synset]:
    """All noun and verb synsets, in file (synset offset) order."""
    synsets: list[Synset] = []
    for name in DATA_FILES:
        with open(wordnet_dir / name, encoding="utf-8") as handle:
            for line in handle:
                synset = parse_data_line(line.rstrip("\n"))
                if synset is not None:
                    synsets.append(synset)
    return synsets


def clean_candidates(synsets: list[Synset]) -> dict[str, list[str]]:
    """Per-category usable texts, in file order.

    Drops texts that occur in more than one category, then keeps the first
    occurrence of each text and of each (case-folded) lemma within a category.
    """
    categories_of: dict[str, set[str]] = defaultdict(set)
    for synset in synsets:
        categories_of[synset.text].add(synset.label)
    seen_texts: dict[str, set[str]] = defaultdict(set)
    seen_lemmas: dict[str, set[str]] = defaultdict(set)
    candidates: dict[str, list[str]] = defaultdict(list)
    for synset in synsets:
        label, text, lemma_key = synset.label, synset.text, synset.lemma.casefold()
        if len(categories_of[text]) > 1 or text in seen_texts[label] or lemma_key in seen_lemmas[label]:
            continue
        seen_texts[label].add(text)
        seen_lemmas[label].add(lemma_key)
        candidates[label].append(text)
    return dict(candidates)


def hash_key(text: str, seed: int) -> tuple[str, str]:
    """Stable, process-independent sort key (sha1 of the salted text, text as tie-break)."""
    return hashlib.sha1(f"{seed}\x00{text}".encode()).hexdigest(), text


def split_class(texts: list[str], n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """First ``n_train`` texts in hash order for train, the next ``n_test`` for test."""
    ordered = sorted(texts, key=lambda text: hash_key(text, seed))
    return ordered[:n_train], ordered[n_train : n_train + n_test]


def check_counts(candidates: dict[str, list[str]], needed: int, tasks=TASKS) -> None:
    """Print per-class candidate counts; exit if any class has too few."""
    short = []
    for task, labels in tasks:
        for label in labels:
            count = len(candidates.get(label, []))
            print(f"{task:24s} {label:20s} {count:6d} candidates")
            if count < needed:
                short.append(f"{label} ({count} < {needed})")
    if short:
        sys.exit(f"error: too few usable examples for: {', '.join(short)}")


def build_rows(
    candidates: dict[str, list[str]], n_train: int, n_test: int, seed: int, tasks=TASKS
) -> dict[str, list[dict[str, str]]]:
    """Rows of each split, grouped by task (stream order), then label, then hash order."""
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in OUTPUT_SPLITS}
    for task, labels in tasks:
        for label in labels:
            train, test = split_class(candidates[label], n_train, n_test, seed)
            for split, texts in zip(OUTPUT_SPLITS, (train, test), strict=True):
                rows[split].extend({"task": task, "label": label, "text": text} for text in texts)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tasks(path: Path, tasks=TASKS) -> None:
    listed = [{"name": task, "labels": list(labels)} for task, labels in tasks]
    path.write_text(json.dumps(listed, indent=2) + "\n", encoding="utf-8")


def licence_from_debian_copyright(path: Path) -> str:
    """The ``License: WordNet3.0`` stanza of a Debian machine-readable copyright file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    body: list[str] = []
    for line in lines[lines.index("License: WordNet3.0") + 1 :]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:].rstrip())
    return "\n".join(body).strip() + "\n"


def licence_from_data_header(data_file: Path) -> str:
    """The licence header of a WordNet data file (lines "  <n> <text>")."""
    body: list[str] = []
    with open(data_file, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("  "):
                break
            fields = line.split(" ", 3)  # ["", "", "<n>", "<text>"]
            body.append(fields[3].rstrip() if len(fields) > 3 else "")
    return "\n".join(body).strip() + "\n"


def licence_text(wordnet_dir: Path) -> str:
    """The WordNet 3.0 licence: Debian's copyright file if present, else the data.noun header (same text)."""
    if DEBIAN_COPYRIGHT.is_file():
        return licence_from_debian_copyright(DEBIAN_COPYRIGHT)
    return licence_from_data_header(wordnet_dir / "data.noun")


def write_licence(path: Path, wordnet_dir: Path) -> None:
    header = (
        "The files in this directory (train.jsonl, test.jsonl, tasks.json) are derived from\n"
        "WordNet 3.0 as shipped by Debian's wordnet-base package (/usr/share/wordnet),\n"
        "built with tools/data/build_wordnet_stream.py. WordNet is distributed under the\n"
        "following licence:\n\n"
    )
    path.write_text(header + licence_text(wordnet_dir), encoding="utf-8")


def write_readme(path: Path, candidates: dict[str, list[str]], n_train: int, n_test: int, seed: int,
                 tasks=TASKS, out: str = "clight/data/wordnet") -> None:
    TASKS = tasks  # noqa: N806 - the text below describes the stream being built
    n_classes = sum(len(labels) for _, labels in TASKS)
    table = "\n".join(
        f"| {i} | `{task}` | {', '.join(f'`{label}`' for label in labels)} |"
        for i, (task, labels) in enumerate(TASKS)
    )
    counts = "\n".join(f"| `{label}` | {len(candidates[label])} |" for _, labels in TASKS for label in labels)
    title = "WordNet continual-learning stream" if tasks is STREAMS["main"] else (
        "WordNet tuning stream\n\nThe stream `clight tune`'s protocol tunes on: lexicographer categories that the quickstart\n"
        "stream (`clight/data/wordnet`) does not use, so that settings chosen here are evaluated on data the\n"
        "tuning never saw.")
    rebuild = "" if tasks is STREAMS["main"] else f" --stream tune --train-per-class {n_train} --test-per-class {n_test}"
    text = f"""# {title}

A small, offline, text-classification task stream derived from WordNet 3.0:
{len(TASKS)} tasks of 4 lexicographer categories each ({n_classes} classes). Each example is one
synset rendered as `"<lemma>: <definition>"` (first lemma of the synset, underscores as
spaces; the definition without its quoted usage examples), labelled with the synset's
lexicographer category.

| # | task | labels |
|---|------|--------|
{table}

- `train.jsonl`: {n_train} examples per class ({n_train * n_classes} lines).
- `test.jsonl`: {n_test} examples per class ({n_test * n_classes} lines).
- One JSON object per line, `{{"task": ..., "label": ..., "text": ...}}`, grouped by task in
  stream order, then by label, then by hash order.
- `tasks.json`: the ordered list of `{{"name": task, "labels": [...]}}`.

Cleaning: texts that occur under more than one category are dropped; within a category,
each text and each (case-folded) lemma is kept once (first synset in file order). The
usable candidates of each class are then ordered by `sha1("{seed}\\x00" + text)`; the first
{n_train} go to train and the next {n_test} to test, so train and test never share a text.

Usable candidates per class:

| label | candidates |
|-------|-----------:|
{counts}

## Rebuild

Requires the WordNet 3.0 database (`apt-get install wordnet-base`). The output is
byte-identical across runs:

```
python tools/data/build_wordnet_stream.py --out {out}{rebuild}
```

`tests/test_wordnet_builder.py` checks the committed files against a fresh build.

## Licence

Derived from WordNet 3.0, Copyright 2006 by Princeton University; distributed under the
WordNet 3.0 licence, reproduced in full in [`LICENSE`](LICENSE).
"""
    path.write_text(text, encoding="utf-8")


def build(
    wordnet_dir: Path, out: Path, n_train: int = 120, n_test: int = 40, seed: int = 0, stream: str = "main"
) -> dict[str, int]:
    """Write the stream (``main`` or ``tune``) into ``out``; returns the per-class candidate counts."""
    tasks = STREAMS[stream]
    check_wordnet_dir(wordnet_dir)
    candidates = clean_candidates(read_synsets(wordnet_dir))
    check_counts(candidates, n_train + n_test, tasks)
    rows = build_rows(candidates, n_train, n_test, seed, tasks)
    out.mkdir(parents=True, exist_ok=True)
    for split in OUTPUT_SPLITS:
        write_jsonl(out / f"{split}.jsonl", rows[split])
    write_tasks(out / "tasks.json", tasks)
    write_licence(out / "LICENSE", wordnet_dir)
    where = "clight/data/wordnet" if stream == "main" else "clight/data/wordnet_tune"
    write_readme(out / "README.md", candidates, n_train, n_test, seed, tasks, where)
    return {label: len(candidates[label]) for _, labels in tasks for label in labels}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    build(args.wordnet_dir, args.out, args.train_per_class, args.test_per_class, args.seed, args.stream)
    print(f"wrote {args.out}/{{train.jsonl,test.jsonl,tasks.json,LICENSE,README.md}}")


if __name__ == "__main__":
    main()
