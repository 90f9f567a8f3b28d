"""Build the committed domain and instruction streams under ``clight/data/{domains,instruct}/``.

Two small, offline continual-learning streams are built from text that ships with
Debian, so no network access is needed:

``domains/`` -- continual pre-training, three domains (tasks) in stream order:

* ``wordnet-glosses``: one document per WordNet 3.0 synset, ``"<lemma>: <gloss>"``
  (first lemma of the synset, underscores as spaces; the gloss is everything after
  ``"| "`` on the synset line, i.e. the definition plus any quoted usage examples).
* ``man-pages``: sections 2, 3, 5 and 7 of the ``manpages`` / ``manpages-dev``
  packages, rendered to plain text with ``groff -man -Tutf8``, backspace overstrikes
  and the running header/footer removed, whitespace collapsed inside paragraphs, and
  truncated to about ``--max-page-chars`` characters.  Only pages whose source carries
  an SPDX licence identifier from :data:`MAN_PAGE_LICENCES` are used, and each used
  page's copyright lines are listed in ``domains/LICENSE``.
* ``licenses``: the licence texts in ``/usr/share/common-licenses`` (``base-files``),
  split into verbatim excerpts of whole paragraphs of about ``--chunk-chars``
  characters.  Symlinked aliases and files with identical content are read once, and a
  paragraph already seen in an earlier file (e.g. shared by GPL-2 and LGPL-2) is
  dropped, ending the excerpt, so near-identical licence versions do not leak
  between train and test.

``instruct/`` -- continual instruction tuning, three WordNet-derived tasks:

* ``define-nouns`` / ``define-verbs``: ``Define the noun "<lemma>".`` ->
  ``<definition>`` (the gloss without its quoted examples).  Only lemmas with a
  single sense in that part of speech are used, at most one lemma per synset, and
  each definition at most once, so every prompt has one correct answer.
* ``antonyms-adjectives``: ``Give an antonym of "<adj>".`` -> ``<antonym>``, from
  the ``!`` (antonym) pointers of ``data.adj`` (see ``wndb(5WN)``); adjectives with
  more than one distinct antonym are dropped.  Both directions of a pair
  (good/bad, bad/good) always land in the same split.

Selection is deterministic and process-independent: candidates are ordered by
``sha1(f"{seed}\\x00{text}")`` (no ``random``, no ``hash()``); the first ones fill the
test split and the following ones the train split.  Running the script twice gives
byte-identical files.

Sources (Debian packages): ``wordnet-base``, ``manpages``, ``manpages-dev``,
``base-files`` and ``groff-base`` (the ``groff`` renderer).

Usage::

    python tools/data/build_domain_streams.py              # writes clight/data/{domains,instruct}
    python tools/data/build_domain_streams.py --out-root /tmp/data --seed 1
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
COMMON_LICENSES_DIR = Path("/usr/share/common-licenses")
DPKG_INFO_DIR = Path("/var/lib/dpkg/info")
DPKG_STATUS = Path("/var/lib/dpkg/status")
MAN_PACKAGES = ("manpages", "manpages-dev")
MAN_SECTIONS = ("2", "3", "5", "7")
SOURCE_PACKAGES = ("wordnet-base", "manpages", "manpages-dev", "base-files", "groff-base")
COPYRIGHT_FILES = {
    "wordnet-base": Path("/usr/share/doc/wordnet-base/copyright"),
    "manpages": Path("/usr/share/doc/manpages/copyright"),
    "manpages-dev": Path("/usr/share/doc/manpages-dev/copyright"),
    "base-files": Path("/usr/share/doc/base-files/copyright"),
}

# Licences (SPDX ids in the page sources) whose texts are in the man-pages copyright
# file; pages under anything else (BSD-4-Clause-UC, unlabelled misc. notices) are skipped.
MAN_PAGE_LICENCES = (
    "Linux-man-pages-copyleft",
    "GPL-2.0-or-later",
    "GPL-1.0-or-later",
    "GPL-2.0-only",
    "BSD-3-Clause",
    "BSD-2-Clause",
    "MIT",
)
GPL2_TEXT = COMMON_LICENSES_DIR / "GPL-2"

DOMAINS = ("wordnet-glosses", "man-pages", "licenses")
INSTRUCT_TASKS = ("define-nouns", "define-verbs", "antonyms-adjectives")
SPLITS = ("train", "test")

ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
OVERSTRIKE = re.compile(r".\x08")
MAN_RUNNING_LINE = re.compile(r"\(\d\w*\)\s*$")
HYPHEN_BREAK = re.compile(r"(?<=\w)\u2010\n[ \t]*(?=\w)")  # groff's hyphenation at a line break
MAN_BODY_INDENT = 7  # columns; "SH" headings start at 0, "SS" at 3
BOX_RULE_LINE = re.compile(r"^[\s\u2500-\u257f]*[\u2500-\u257f][\s\u2500-\u257f]*$")  # tbl ruling
BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*(\S+)")
COPYRIGHT_LINE = re.compile(r"copyright|\(c\)|©", re.IGNORECASE)


# --------------------------------------------------------------------------- errors


def missing_source(what: str, path: Path, package: str) -> None:
    """Exit naming the Debian package that provides a missing source and the fix."""
    sys.exit(
        f"error: {what} not found at {path}.\n"
        f"It is shipped by the Debian package '{package}'; install it with:\n"
        f"    sudo apt-get install -y {package}\n"
        "(this script only runs on a developer machine; the committed outputs need nothing)"
    )


def check_sources() -> None:
    """Fail early, with an actionable message, if any input is missing."""
    for name in WORDNET_DATA_FILES:
        if not (WORDNET_DIR / name).is_file():
            missing_source(f"WordNet 3.0 database file {name}", WORDNET_DIR / name, "wordnet-base")
    for package in MAN_PACKAGES:
        listing = DPKG_INFO_DIR / f"{package}.list"
        if not listing.is_file():
            missing_source(f"file list of the {package} manual pages", listing, package)
    if not COMMON_LICENSES_DIR.is_dir():
        missing_source("the common licence texts", COMMON_LICENSES_DIR, "base-files")
    for package, path in COPYRIGHT_FILES.items():
        if not path.is_file():
            missing_source(f"the copyright file of {package}", path, package)
    if shutil.which("groff") is None:
        missing_source("the groff troff renderer", Path("/usr/bin/groff"), "groff-base")


# --------------------------------------------------------------------------- hashing / io


def hash_key(text: str, seed: int) -> tuple[str, str]:
    """Stable sort key: sha1 of the seed-salted text, the text itself as tie-break."""
    return hashlib.sha1(f"{seed}\x00{text}".encode()).hexdigest(), text


def write_jsonl(path: Path, rows: Iterable[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tasks(path: Path, names: Iterable[str]) -> None:
    tasks = [{"name": name} for name in names]
    path.write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def collapse(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return " ".join(text.split())


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, trailing spaces stripped, empty ones dropped."""
    paragraphs = []
    for block in BLANK_LINES.split(text.replace("\r\n", "\n")):
        lines = [line.rstrip() for line in block.split("\n")]
        paragraph = "\n".join(lines).strip("\n")
        if paragraph.strip():
            paragraphs.append(paragraph)
    return paragraphs


# --------------------------------------------------------------------------- WordNet


@dataclass(frozen=True)
class Pointer:
    symbol: str
    offset: int
    pos: str
    source: int  # 1-based word number in this synset, 0 for a semantic pointer
    target: int  # 1-based word number in the target synset, 0 for a semantic pointer


@dataclass(frozen=True)
class Synset:
    offset: int
    pos: str
    words: tuple[str, ...]
    pointers: tuple[Pointer, ...]
    gloss: str

    @property
    def definition(self) -> str:
        """The gloss without the quoted usage examples that follow the definition."""
        return self.gloss.split('; "', 1)[0].strip().rstrip(";").strip()


def clean_word(word: str) -> str:
    """``Good_Friday`` -> ``Good Friday``; drops the adjective markers ``(a)``, ``(p)``, ``(ip)``."""
    return ADJ_MARKER.sub("", word).replace("_", " ")


def parse_synset_line(line: str) -> Synset | None:
    """Parse one ``data.*`` line (format in wndb(5WN)); ``None`` for licence header lines."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    offset, pos, w_cnt = int(parts[0]), parts[2], int(parts[3], 16)
    words = tuple(clean_word(parts[4 + 2 * i]) for i in range(w_cnt))
    index = 4 + 2 * w_cnt
    p_cnt = int(parts[index])
    pointers = []
    for i in range(p_cnt):
        symbol, target, target_pos, source_target = parts[index + 1 + 4 * i : index + 5 + 4 * i]
        pointers.append(
            Pointer(symbol, int(target), target_pos, int(source_target[:2], 16), int(source_target[2:], 16))
        )
    return Synset(offset, pos, words, tuple(pointers), gloss.strip())


def read_synsets(data_file: Path) -> list[Synset]:
    """All synsets of one ``data.*`` file, in file (offset) order."""
    synsets = []
    with open(data_file, encoding="utf-8") as handle:
        for line in handle:
            synset = parse_synset_line(line.rstrip("\n"))
            if synset is not None:
                synsets.append(synset)
    return synsets


def read_wordnet() -> dict[str, list[Synset]]:
    """``{"noun": [...], "verb": [...], "adj": [...], "adv": [...]}``."""
    return {name.split(".")[1]: read_synsets(WORDNET_DIR / name) for name in WORDNET_DATA_FILES}


# --------------------------------------------------------------------------- domain documents


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # where it came from, for attribution (not written to the jsonl)


def gloss_documents(wordnet: dict[str, list[Synset]]) -> list[Document]:
    """One ``"<lemma>: <gloss>"`` document per synset of all four parts of speech."""
    docs = []
    for pos, synsets in wordnet.items():
        for synset in synsets:
            if synset.words and synset.gloss:
                docs.append(Document(f"{synset.words[0]}: {synset.gloss}", f"data.{pos}:{synset.offset:08d}"))
    return docs


@dataclass(frozen=True)
class ManPage:
    path: Path
    spdx: str | None
    copyright: tuple[str, ...]
    source: bytes


def man_page_paths() -> list[Path]:
    """Regular (non-symlink) page files of the man packages in the wanted sections, sorted."""
    prefixes = tuple(f"/usr/share/man/man{section}/" for section in MAN_SECTIONS)
    paths = set()
    for package in MAN_PACKAGES:
        for line in (DPKG_INFO_DIR / f"{package}.list").read_text(encoding="utf-8").splitlines():
            path = Path(line)
            if (
                line.startswith(prefixes)
                and line.endswith(".gz")
                and path.is_file()
                and not path.is_symlink()
            ):
                paths.add(path)
    if not paths:
        missing_source("manual pages of sections 2, 3, 5, 7", Path("/usr/share/man"), " ".join(MAN_PACKAGES))
    return sorted(paths)


def read_man_page(path: Path) -> ManPage | None:
    """The troff source with its licence id and copyright lines; ``None`` for ``.so`` stubs."""
    source = gzip.decompress(path.read_bytes())
    text = source.decode("utf-8", errors="replace")
    if text.lstrip().startswith(".so "):
        return None
    spdx = None
    copyright_lines = []
    for line in text.splitlines():
        if not (line.startswith('.\\"') or line.startswith("'\\\"")):
            if line.startswith(".TH"):
                break
            continue
        comment = line[3:].strip()
        match = SPDX_LINE.search(comment)
        if match:
            spdx = match.group(1)
        elif COPYRIGHT_LINE.search(comment):
            copyright_lines.append(collapse(comment))
    return ManPage(path, spdx, tuple(copyright_lines), source)


# Very long lines (-rLL) so groff hardly ever breaks, hence hyphenates, a line; -rcR=1: one
# continuous page (a single header and footer); -P-c: no SGR escapes (overstrikes instead).
GROFF_COMMAND = ("groff", "-k", "-Kutf-8", "-t", "-man", "-Tutf8", "-P-c", "-Ww", "-rLL=1000n", "-rcR=1")


def render_man_page(source: bytes) -> str:
    """troff source -> plain UTF-8 text with overstrikes removed (header/footer kept)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    result = subprocess.run(GROFF_COMMAND, input=source, capture_output=True, env=env, check=True)
    return OVERSTRIKE.sub("", result.stdout.decode("utf-8", errors="replace")).replace("\x08", "")


def strip_running_lines(text: str) -> str:
    """Drop the page header (first line) and footer (last line), e.g. ``open(2) ... open(2)``."""
    lines = text.strip("\n").split("\n")
    if lines and MAN_RUNNING_LINE.search(lines[0]):
        lines = lines[1:]
    if lines and MAN_RUNNING_LINE.search(lines[-1]):
        lines = lines[:-1]
    return "\n".join(lines)


def truncate(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut at a whitespace boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    boundary = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:boundary] if boundary > 0 else cut[:max_chars]).rstrip()


def drop_table_rules(text: str) -> str:
    """Remove tbl's box-drawing rule lines and turn its column bars into ``|``."""
    lines = [line for line in text.split("\n") if not BOX_RULE_LINE.match(line)]
    return "\n".join(lines).replace("\u2502", "|")


def separate_headings(text: str) -> str:
    """Put (sub)section headings, which groff indents less than the body, in their own paragraph."""
    lines = []
    for line in text.split("\n"):
        if line.strip() and len(line) - len(line.lstrip(" ")) < MAN_BODY_INDENT:
            lines.extend(["", line, ""])
        else:
            lines.append(line)
    return "\n".join(lines)


def man_page_text(rendered: str, max_chars: int) -> str:
    """Rendered page -> paragraphs with collapsed whitespace, truncated to ``max_chars``."""
    text = drop_table_rules(HYPHEN_BREAK.sub("", strip_running_lines(rendered)))
    text = separate_headings(text)
    paragraphs = [collapse(p) for p in split_paragraphs(text)]
    return truncate("\n\n".join(paragraphs), max_chars)


def man_documents(max_chars: int, workers: int) -> tuple[list[Document], dict[str, ManPage]]:
    """Rendered pages under an accepted licence, plus ``{source: page}`` for attribution."""
    pages = [page for page in map(read_man_page, man_page_paths()) if page is not None]
    pages = [page for page in pages if page.spdx in MAN_PAGE_LICENCES]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rendered = list(pool.map(render_man_page, (page.source for page in pages)))
    docs, by_source = [], {}
    for page, text in zip(pages, rendered, strict=True):
        source = f"{page.path.parent.name}/{page.path.name.removesuffix('.gz')}"
        docs.append(Document(man_page_text(text, max_chars), source))
        by_source[source] = page
    return docs, by_source


def licence_files() -> list[tuple[str, Path]]:
    """``(name, resolved path)`` of each distinct licence text: regular files first, in name order.

    Symlinked aliases (``GPL -> GPL-3``) are followed once and are then dropped as duplicates.
    """
    seen: dict[bytes, str] = {}
    files = []
    for path in sorted(COMMON_LICENSES_DIR.iterdir(), key=lambda p: (p.is_symlink(), p.name)):
        resolved = path.parent / os.readlink(path) if path.is_symlink() else path
        if not resolved.is_file():
            continue
        content = resolved.read_bytes()
        if content in seen:
            continue
        seen[content] = path.name
        files.append((path.name, resolved))
    return files


def licence_documents(chunk_chars: int) -> list[Document]:
    """Verbatim runs of whole paragraphs of about ``chunk_chars`` characters.

    A paragraph that (up to whitespace and case) already occurred in an earlier file or
    earlier in the same file is dropped and ends the current run.
    """
    seen: set[str] = set()
    docs: list[Document] = []
    for name, path in licence_files():
        run: list[str] = []

        def flush(name: str = name, run: list[str] = run) -> None:
            if run:
                docs.append(Document("\n\n".join(run), f"common-licenses/{name}"))
                run.clear()

        for paragraph in split_paragraphs(path.read_text(encoding="utf-8")):
            key = collapse(paragraph).casefold()
            if key in seen:
                flush()
                continue
            seen.add(key)
            if run and len("\n\n".join([*run, paragraph])) > chunk_chars:
                flush()
            run.append(paragraph)
        flush()
    return docs


@dataclass
class DomainSplit:
    train: list[Document] = field(default_factory=list)
    test: list[Document] = field(default_factory=list)
    candidates: int = 0

    def nbytes(self, split: str) -> int:
        return sum(utf8_len(doc.text) for doc in getattr(self, split))


def split_by_bytes(docs: list[Document], train_bytes: int, test_bytes: int, seed: int) -> DomainSplit:
    """De-duplicate, order by hash; fill test up to ``test_bytes``, then train up to ``train_bytes``.

    Each split takes documents until it reaches its budget (so it overshoots by less
    than one document); a domain with too little text gets a smaller train split.
    """
    unique = list({doc.text: doc for doc in reversed(docs) if doc.text}.values())
    ordered = sorted(unique, key=lambda doc: hash_key(doc.text, seed))
    result = DomainSplit(candidates=len(ordered))
    budgets = {"test": test_bytes, "train": train_bytes}
    split, used = "test", 0
    for doc in ordered:
        if used >= budgets[split]:
            if split == "train":
                break
            split, used = "train", 0
        getattr(result, split).append(doc)
        used += utf8_len(doc.text)
    return result


# --------------------------------------------------------------------------- instruction pairs


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    group: str  # pairs of one group always share a split


def definition_pairs(synsets: list[Synset], noun_or_verb: str) -> list[Pair]:
    """One pair per synset with a monosemous lemma; every lemma and definition used once."""
    senses: dict[str, int] = defaultdict(int)
    for synset in synsets:
        for word in {w.casefold() for w in synset.words}:
            senses[word] += 1
    pairs, used_words, used_definitions = [], set(), set()
    for synset in synsets:
        definition = synset.definition
        if not definition or definition in used_definitions:
            continue
        for word in synset.words:
            key = word.casefold()
            if senses[key] == 1 and key not in used_words:
                used_words.add(key)
                used_definitions.add(definition)
                prompt = f'Define the {noun_or_verb} "{word}".'
                pairs.append(Pair(prompt, definition, group=prompt))
                break
    return pairs


def antonym_pairs(adjectives: list[Synset]) -> list[Pair]:
    """Direct antonyms from ``!`` pointers; adjectives with several antonyms are dropped."""
    by_offset = {synset.offset: synset for synset in adjectives}
    antonyms: dict[str, dict[str, str]] = defaultdict(dict)  # word key -> {antonym key: antonym}
    spelling: dict[str, str] = {}
    for synset in adjectives:
        for pointer in synset.pointers:
            if pointer.symbol != "!" or pointer.pos not in ("a", "s") or pointer.offset not in by_offset:
                continue
            source = synset.words[pointer.source - 1]
            target = by_offset[pointer.offset].words[pointer.target - 1]
            if source.casefold() == target.casefold():
                continue
            spelling.setdefault(source.casefold(), source)
            antonyms[source.casefold()].setdefault(target.casefold(), target)
    pairs = []
    for key in sorted(antonyms):
        if len(antonyms[key]) != 1:
            continue
        ((target_key, target),) = antonyms[key].items()
        group = "\x00".join(sorted((key, target_key)))
        pairs.append(Pair(f'Give an antonym of "{spelling[key]}".', target, group))
    return pairs


def unique_pairs(pairs: list[Pair]) -> list[Pair]:
    """First pair per prompt (case-folded)."""
    seen: set[str] = set()
    result = []
    for pair in pairs:
        if pair.prompt.casefold() not in seen:
            seen.add(pair.prompt.casefold())
            result.append(pair)
    return result


def split_pairs(pairs: list[Pair], n_train: int, n_test: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Groups in hash order; test is filled first, then train.

    A group never straddles splits: when it does not fit in what is left of a split,
    its surplus pairs are dropped (not moved to the next split).
    """
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in unique_pairs(pairs):
        groups[pair.group].append(pair)
    order = sorted(groups, key=lambda group: hash_key(group, seed))
    splits: dict[str, list[Pair]] = {"test": [], "train": []}
    sizes = {"test": n_test, "train": n_train}
    current = "test"
    for group in order:
        if len(splits[current]) >= sizes[current]:
            if current == "train":
                break
            current = "train"
        members = sorted(groups[group], key=lambda pair: pair.prompt)
        splits[current].extend(members[: sizes[current] - len(splits[current])])
    for split, size in sizes.items():
        if len(splits[split]) < size:
            sys.exit(f"error: only {len(splits[split])} {split} pairs available, {size} requested")
    return splits["train"], splits["test"]


# --------------------------------------------------------------------------- provenance / docs


def package_versions() -> dict[str, str]:
    """Installed versions of the source packages, read from the dpkg status file."""
    versions: dict[str, str] = {}
    if not DPKG_STATUS.is_file():
        return versions
    for stanza in DPKG_STATUS.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") in SOURCE_PACKAGES and "installed" in fields.get("Status", ""):
            versions[fields["Package"]] = fields.get("Version", "?")
    return {name: versions[name] for name in SOURCE_PACKAGES if name in versions}


def groff_version() -> str:
    result = subprocess.run(["groff", "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0].strip()


def provenance_lines(versions: dict[str, str]) -> str:
    return "\n".join(f"- `{name}` {version}" for name, version in versions.items())


def section(title: str, body: str) -> str:
    rule = "=" * 78
    return f"{rule}\n{title}\n{rule}\n\n{body.rstrip()}\n\n"


def domains_licence(man_pages: list[ManPage], licence_sources: list[str]) -> str:
    man_copyright = COPYRIGHT_FILES["manpages"].read_text(encoding="utf-8")
    man_dev_copyright = COPYRIGHT_FILES["manpages-dev"].read_text(encoding="utf-8")
    attribution = []
    for page in man_pages:
        holders = "; ".join(page.copyright) or "see the man-pages copyright file below"
        attribution.append(
            f"{page.path.parent.name}/{page.path.name.removesuffix('.gz')} [{page.spdx}]: {holders}"
        )
    text = (
        "Licences of the data in this directory (train.jsonl, test.jsonl, tasks.json)\n\n"
        "The documents are derived from three sources, one per task. Each part keeps its own\n"
        "licence; the Apache-2.0 licence of the clight code does NOT apply to them.\n\n"
        '1. task "wordnet-glosses": WordNet 3.0 glosses (Debian package wordnet-base).\n'
        "   WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\n"
        "   Licence: the WordNet 3.0 licence, in section A below.\n\n"
        '2. task "man-pages": plain-text renderings (formatted with groff, truncated) of pages\n'
        "   of the Linux man-pages project, sections 2, 3, 5 and 7 (Debian packages manpages and\n"
        "   manpages-dev; source: https://www.kernel.org/pub/linux/docs/man-pages/).\n"
        "   Only pages under the licences listed in their SPDX-License-Identifier below were\n"
        "   used (Linux-man-pages-copyleft, GPL-2.0-or-later, GPL-1.0-or-later, GPL-2.0-only,\n"
        "   BSD-3-Clause, BSD-2-Clause, MIT). These are processed versions distributed without\n"
        "   their troff source; as the Linux-man-pages-copyleft licence requires, the copyright\n"
        "   holders and authors of every page used are acknowledged in section B, and the full\n"
        "   Debian copyright file of both packages (with all licence texts) is in section C.\n"
        "   The full text of the GNU General Public License version 2 is in section D.\n\n"
        '3. task "licenses": verbatim excerpts of the licence texts in /usr/share/common-licenses\n'
        "   (Debian package base-files): " + ", ".join(licence_sources) + ".\n"
        "   These are the texts of the licences themselves; their publishers permit verbatim\n"
        '   copying and distribution of them (e.g. the FSF: "Everyone is permitted to copy and\n'
        "   distribute verbatim copies of this license document, but changing it is not\n"
        '   allowed"). The excerpts are unchanged runs of whole paragraphs. The copyright file\n'
        "   of base-files, which ships them, is in section E.\n\n"
    )
    text += section(
        "A. WordNet 3.0 (/usr/share/doc/wordnet-base/copyright, verbatim)",
        COPYRIGHT_FILES["wordnet-base"].read_text(encoding="utf-8"),
    )
    text += section(
        "B. Man pages used: source file [SPDX licence]: copyright lines from the page source",
        "\n".join(attribution),
    )
    if man_copyright == man_dev_copyright:
        text += section(
            "C. man-pages (/usr/share/doc/manpages/copyright, verbatim; "
            "/usr/share/doc/manpages-dev/copyright is byte-identical)",
            man_copyright,
        )
    else:
        text += section("C1. man-pages (/usr/share/doc/manpages/copyright, verbatim)", man_copyright)
        text += section("C2. man-pages (/usr/share/doc/manpages-dev/copyright, verbatim)", man_dev_copyright)
    text += section(
        "D. GNU General Public License version 2 (/usr/share/common-licenses/GPL-2, verbatim)",
        GPL2_TEXT.read_text(encoding="utf-8"),
    )
    text += section(
        "E. base-files (/usr/share/doc/base-files/copyright, verbatim)",
        COPYRIGHT_FILES["base-files"].read_text(encoding="utf-8"),
    )
    return text.rstrip() + "\n"


def instruct_licence() -> str:
    return (
        "Licence of the data in this directory (train.jsonl, test.jsonl, tasks.json)\n\n"
        "All prompt/response pairs are derived from WordNet 3.0 (Debian package wordnet-base).\n"
        "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\n"
        "The Apache-2.0 licence of the clight code does NOT apply to this data; it is\n"
        "distributed under the WordNet 3.0 licence, reproduced below from\n"
        "/usr/share/doc/wordnet-base/copyright (verbatim):\n\n"
        + COPYRIGHT_FILES["wordnet-base"].read_text(encoding="utf-8").rstrip()
        + "\n"
    )


def domains_readme(
    splits: dict[str, DomainSplit], args: argparse.Namespace, versions: dict[str, str], groff: str
) -> str:
    rows = "\n".join(
        f"| {i} | `{name}` | {s.candidates} | {len(s.train)} | {s.nbytes('train')} | {len(s.test)} | {s.nbytes('test')} |"
        for i, (name, s) in enumerate(splits.items())
    )
    short = [name for name, split in splits.items() if split.nbytes("train") < args.train_bytes]
    short_note = (
        f" Domains with less text than the budget get a smaller train split: {', '.join(short)}."
        if short
        else ""
    )
    return f"""# Domain stream (continual pre-training)

Three text domains, one task each, in stream order. Every line of `train.jsonl` /
`test.jsonl` is `{{"task": ..., "text": ...}}`; lines are grouped by task in stream order
(`tasks.json`, a list of `{{"name": ...}}`) and in hash order within a task.

| # | task | candidate docs | train docs | train bytes | test docs | test bytes |
|---|------|---------------:|-----------:|------------:|----------:|-----------:|
{rows}

(bytes: UTF-8 size of the `text` fields.)

- `wordnet-glosses`: one document per WordNet 3.0 synset (all parts of speech),
  `"<lemma>: <gloss>"` with the full gloss (definition and any quoted examples).
- `man-pages`: Linux man-pages, sections 2, 3, 5, 7, rendered with
  `{" ".join(GROFF_COMMAND)}` ({groff}); overstrikes and the running header/footer removed,
  whitespace collapsed inside paragraphs (paragraphs separated by a blank line), truncated
  at a word boundary to {args.max_page_chars} characters. Only pages with one of the SPDX
  licences listed in `LICENSE` are used.
- `licenses`: verbatim runs of whole paragraphs (about {args.chunk_chars} characters) of the
  licence texts in `/usr/share/common-licenses`; aliases and repeated paragraphs (e.g. shared
  by GPL-2 and LGPL-2) are kept once.{short_note}

Selection: documents are de-duplicated and ordered by `sha1("{args.seed}\\x00" + text)`; the
first ones fill the test split (about {args.test_bytes} bytes), the next ones the train split
(about {args.train_bytes} bytes).

## Rebuild

On a Debian/Ubuntu machine with the source packages installed
(`apt-get install -y wordnet-base manpages manpages-dev base-files groff-base`):

```
python tools/data/build_domain_streams.py
```

The output is byte-identical across runs with the same package versions. Built from:

{provenance_lines(versions)}

## Licence

Each task keeps the licence of its source (WordNet 3.0 licence; man-pages licences,
mostly Linux-man-pages-copyleft and GPL-2.0-or-later; the licence texts' own verbatim-copying
terms). See [`LICENSE`](LICENSE), which also lists the copyright holders of every man page used.
"""


def instruct_readme(
    counts: dict[str, tuple[int, int, int]], args: argparse.Namespace, versions: dict[str, str]
) -> str:
    rows = "\n".join(
        f"| {i} | `{name}` | {cand} | {train} | {test} |"
        for i, (name, (cand, train, test)) in enumerate(counts.items())
    )
    return f"""# Instruction stream (continual instruction tuning)

Three WordNet 3.0 tasks in stream order. Every line of `train.jsonl` / `test.jsonl` is
`{{"task": ..., "prompt": ..., "response": ...}}`; lines are grouped by task in stream order
(`tasks.json`, a list of `{{"name": ...}}`) and in hash order within a task.

| # | task | candidate pairs | train | test |
|---|------|----------------:|------:|-----:|
{rows}

- `define-nouns`, `define-verbs`: `Define the noun "<lemma>".` / `Define the verb "<lemma>".`
  -> the synset's definition (gloss without the quoted examples). Only lemmas with a single
  sense in that part of speech, at most one lemma per synset and each definition once, so
  each prompt has exactly one reference answer.
- `antonyms-adjectives`: `Give an antonym of "<adj>".` -> the direct antonym from the `!`
  pointers of `data.adj` (`man 5 wndb`); adjectives with more than one distinct antonym are
  left out. Both directions of a pair (e.g. able/unable and unable/able) are kept in the
  same split.

Selection: pairs are de-duplicated by prompt and their groups ordered by
`sha1("{args.seed}\\x00" + key)`; the first {args.test_pairs} pairs form the test split, the next
{args.train_pairs} the train split. Train and test share no prompt.

## Rebuild

Requires WordNet 3.0 (`apt-get install -y wordnet-base`), plus the packages listed in
`../domains/README.md` since the same script builds both folders:

```
python tools/data/build_domain_streams.py
```

Byte-identical across runs. Built from:

{provenance_lines(versions)}

## Licence

Derived from WordNet 3.0, Copyright 2006 by Princeton University, under the WordNet 3.0
licence, reproduced in [`LICENSE`](LICENSE).
"""


# --------------------------------------------------------------------------- build


def build_domains(
    args: argparse.Namespace, wordnet: dict[str, list[Synset]], versions: dict[str, str]
) -> None:
    out = args.out_root / "domains"
    man_docs, man_pages = man_documents(args.max_page_chars, args.workers)
    sources: dict[str, Callable[[], list[Document]]] = {
        "wordnet-glosses": lambda: gloss_documents(wordnet),
        "man-pages": lambda: man_docs,
        "licenses": lambda: licence_documents(args.chunk_chars),
    }
    splits = {
        name: split_by_bytes(sources[name](), args.train_bytes, args.test_bytes, args.seed)
        for name in DOMAINS
    }
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(
            out / f"{split}.jsonl",
            ({"task": name, "text": doc.text} for name in DOMAINS for doc in getattr(splits[name], split)),
        )
    write_tasks(out / "tasks.json", DOMAINS)
    used_pages = sorted({doc.source for s in SPLITS for doc in getattr(splits["man-pages"], s)})
    licence_sources = [name for name, _ in licence_files()]
    (out / "LICENSE").write_text(
        domains_licence([man_pages[p] for p in used_pages], licence_sources), encoding="utf-8"
    )
    (out / "README.md").write_text(domains_readme(splits, args, versions, groff_version()), encoding="utf-8")
    for name, s in splits.items():
        print(
            f"domains  {name:20s} candidates {s.candidates:6d}  train {len(s.train):5d} docs "
            f"{s.nbytes('train'):7d} B  test {len(s.test):4d} docs {s.nbytes('test'):6d} B"
        )


def build_instruct(
    args: argparse.Namespace, wordnet: dict[str, list[Synset]], versions: dict[str, str]
) -> None:
    out = args.out_root / "instruct"
    candidates = {
        "define-nouns": definition_pairs(wordnet["noun"], "noun"),
        "define-verbs": definition_pairs(wordnet["verb"], "verb"),
        "antonyms-adjectives": antonym_pairs(wordnet["adj"]),
    }
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    counts: dict[str, tuple[int, int, int]] = {}
    for task in INSTRUCT_TASKS:
        train, test = split_pairs(candidates[task], args.train_pairs, args.test_pairs, args.seed)
        for split, pairs in (("train", train), ("test", test)):
            rows[split].extend({"task": task, "prompt": p.prompt, "response": p.response} for p in pairs)
        counts[task] = (len(unique_pairs(candidates[task])), len(train), len(test))
        print(
            f"instruct {task:20s} candidates {counts[task][0]:6d}  train {len(train):4d}  test {len(test):4d}"
        )
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(out / f"{split}.jsonl", rows[split])
    write_tasks(out / "tasks.json", INSTRUCT_TASKS)
    (out / "LICENSE").write_text(instruct_licence(), encoding="utf-8")
    (out / "README.md").write_text(instruct_readme(counts, args, versions), encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out-root",
        type=Path,
        default=Path("clight/data"),
        help="writes <out-root>/domains and <out-root>/instruct",
    )
    parser.add_argument("--seed", type=int, default=0, help="salt of the sha1 ordering")
    parser.add_argument("--train-bytes", type=int, default=250_000, help="text bytes per domain, train")
    parser.add_argument("--test-bytes", type=int, default=25_000, help="text bytes per domain, test")
    parser.add_argument("--max-page-chars", type=int, default=4000, help="truncate each man page to this")
    parser.add_argument("--chunk-chars", type=int, default=1500, help="size of the licence excerpts")
    parser.add_argument("--train-pairs", type=int, default=400, help="instruction pairs per task, train")
    parser.add_argument("--test-pairs", type=int, default=100, help="instruction pairs per task, test")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel groff processes (does not affect the output)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_sources()
    versions = package_versions()
    wordnet = read_wordnet()
    build_domains(args, wordnet, versions)
    build_instruct(args, wordnet, versions)
    print(f"wrote {args.out_root}/domains and {args.out_root}/instruct")


if __name__ == "__main__":
    main()
