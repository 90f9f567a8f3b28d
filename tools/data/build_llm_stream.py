"""Build the committed LLM instruction stream and its eval-only probes under ``clight/data/llm/``.

The data is meant for continually fine-tuning a small pretrained instruction LLM
(SmolLM2-135M-Instruct) on a stream of four short-answer tasks and for measuring what
general ability it loses on held-out probes.  Everything is derived from text that
Debian packages ship, so no network access (and no model or data-set hub) is needed.

Stream (``train.jsonl`` / ``test.jsonl``, rows ``{"task", "prompt", "response"}``), in
stream order:

* ``man-commands``: ``What does the command `<name>` do? Answer in a few words.`` ->
  the one-line summary of the NAME section of its manual page (section 1 or 8).
  Pages come only from the packages in :data:`MAN_PACKAGES` (their dpkg file lists,
  ``/usr/share/man/man{1,8}/*.gz``, no symlinks, no ``.so`` stubs), rendered with
  ``groff -man -Tutf8``.  A page is used only if it states its own licence: an
  ``SPDX-License-Identifier`` from :data:`MAN_SPDX_LICENCES` in its source (the
  ``manpages`` package), or a COPYRIGHT / LICENSE section of the rendered page that
  matches one of :data:`MAN_SECTION_LICENCES` (GPLv3+, GFDL-1.3+ without invariant
  sections, Apache-2.0, GPL).  The copyright lines of every used page are listed in
  ``LICENSE``.  The command is the page's file name without section (or, when that
  is not one of the names in the NAME line, the first name there; ``openssl-<cmd>``
  becomes ``openssl <cmd>``); pages in :data:`MAN_EXCLUDED_PAGES` (introductions,
  option overviews) are skipped, and a command with several pages keeps the first
  (package order, then path).  The summary keeps its wording; a leading capital is
  lower-cased (unless the word is an acronym or the next word is capitalised too)
  and a trailing full stop dropped.
  Summaries longer than :data:`MAX_SUMMARY_CHARS` characters are skipped.  Pages with
  the same summary (e.g. ``ls`` / ``dir`` / ``vdir``) always share a split.
* ``hypernyms``: ``What kind of thing is "<noun>"? Answer with one word or a short
  phrase.`` -> the first lemma of the WordNet 3.0 hypernym (``@`` pointer) of the
  noun's synset.  Only nouns with a single noun sense and a SemCor tag count >= 1
  (``index.noun``), spelt in lower case in that synset (no proper nouns), whose
  synset has exactly one hypernym and no instance hypernym; answers of at most three words, not contained in the noun and sharing
  no word with it (``"oak tree"`` -> ``"tree"`` is left out).
* ``antonyms``: ``What is the opposite of the adjective "<adj>"? Answer with one
  word.`` -> its direct antonym (``!`` pointers of ``data.adj``): one-word
  adjectives with exactly one distinct antonym, itself one word, both with a SemCor
  tag count >= 1 (``index.adj``).  Both directions of a pair (good/bad, bad/good) share a split.
* ``adjective-attributes``: ``Which attribute does the adjective "<adj>" describe?
  Answer with one word.`` -> the first lemma of the noun synset its ``=``
  (attribute) pointer leads to (heavy -> weight).  One-word adjectives whose senses
  with attribute pointers all name the same one-word attribute, which neither
  contains nor is contained in the adjective.

Each task's candidates are de-duplicated by prompt and grouped (pairs of one group
always share a split); groups are ordered by ``sha1(f"{seed}\\x00{key}")``, the first
``--test-per-task`` rows form the test split and the next ``--train-per-task`` the
train split.

Probes (``probes.jsonl``; eval only, never trained on; none of their words is a word
of the stream):

* ``word-meaning`` (multiple choice): ``What does the <noun|verb|adjective> "<w>"
  mean?`` with four WordNet definitions (the gloss without quoted examples) as
  choices: the definition of the word's only sense and the definitions of three
  other probe-candidate words of the same part of speech whose length is within a
  factor :data:`DISTRACTOR_LENGTH_RATIO` of the gold's (so that the summed
  log-likelihood is not decided by length).  Candidates are lower-case one-word
  lemmas with a single sense in that part of speech and a SemCor tag count >=
  :data:`WORD_MEANING_MIN_TAGS`, neither a word, answer or command of the stream nor
  with a synset the stream uses, whose definition has 15..90 characters and does
  not contain the word; equal numbers of nouns, verbs and adjectives, each word
  asked about once.
* ``city-country`` (multiple choice): ``In which country is the city of <city>?``
  -> its country.  Cities are the last component of the zone names of tzdata's
  ``zone.tab`` (underscores as spaces), countries the iso-codes ISO 3166-1 names
  (``common_name`` where given, else ``name``; names with a comma or parenthesis
  are left out).  Zones in Antarctica or whose city contains or is contained in
  the country name are dropped; at most :data:`CITIES_PER_COUNTRY` cities per
  country (hash order).  The three distractors are other countries with a zone in
  the same tz area (``Europe``, ``America``, ...), in hash order.
* ``city-country-open`` (string answer): ``In which country is the city of <city>?
  Answer with the country name only.`` -> the country name, for the next
  ``--city-open-items`` cities of the same hash order (none of them in
  ``city-country``): the same knowledge, asked for free generation.
* ``prose-ppl`` (perplexity): ``{"task": "prose-ppl", "text": ...}``, fortune-cookie
  passages of 200..600 characters from the files in :data:`FORTUNE_FILES`
  (``fortunes-min`` / ``fortunes``): blank lines between paragraphs kept, every line
  stripped and its inner whitespace collapsed; passages with control characters,
  undecodable bytes or mostly non-letters (ASCII art) are dropped.

Multiple-choice rows are ``{"task", "prompt", "choices": [4 strings], "answer": int}``.
The gold position is balanced: items are ranked by a second sha1 order and the item
of rank ``r`` has its answer at index ``r % 4``; distractors fill the other slots in
their hash order.  Probe items are taken in hash order as well.

Selection never uses ``random`` or ``hash()``; running the script twice gives
byte-identical files (for the same installed package versions, which ``README.md``
records).

Sources (Debian packages): ``wordnet-base``, ``manpages``, ``coreutils``,
``diffutils``, ``findutils``, ``gettext``, ``binutils-common``, ``less``, ``openssl``,
``tzdata``, ``iso-codes``, ``fortunes-min``, ``fortunes``, ``base-files`` (licence
texts) and ``groff-base`` (the ``groff`` renderer)::

    apt-get install -y wordnet-base manpages coreutils diffutils findutils gettext \\
        binutils-common less openssl tzdata iso-codes fortunes-min fortunes base-files groff-base

Usage::

    python tools/data/build_llm_stream.py                  # writes clight/data/llm
    python tools/data/build_llm_stream.py --out-root /tmp/data --seed 1
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
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OUT_NAME = "llm"
SPLITS = ("train", "test")
STREAM_TASKS = ("man-commands", "hypernyms", "antonyms", "adjective-attributes")
PROBES = ("word-meaning", "city-country", "city-country-open", "prose-ppl")
PROBE_KINDS = {
    "word-meaning": "multiple-choice",
    "city-country": "multiple-choice",
    "city-country-open": "generation",
    "prose-ppl": "perplexity",
}
N_CHOICES = 4

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_POS = ("noun", "verb", "adj", "adv")
DPKG_INFO_DIR = Path("/var/lib/dpkg/info")
DPKG_STATUS = Path("/var/lib/dpkg/status")
COMMON_LICENSES_DIR = Path("/usr/share/common-licenses")
ZONE_TAB = Path("/usr/share/zoneinfo/zone.tab")
ISO_3166_1 = Path("/usr/share/iso-codes/json/iso_3166-1.json")
FORTUNE_DIR = Path("/usr/share/games/fortunes")

MAN_PACKAGES = (
    "manpages",
    "coreutils",
    "diffutils",
    "findutils",
    "gettext",
    "binutils-common",
    "less",
    "openssl",
)
MAN_SECTIONS = ("1", "8")
SOURCE_PACKAGES = (
    "wordnet-base",
    *MAN_PACKAGES,
    "tzdata",
    "iso-codes",
    "fortunes-min",
    "fortunes",
    "base-files",
    "groff-base",
)
# Fortune files used for prose-ppl and the package that ships each.
FORTUNE_FILES = {
    "literature": "fortunes-min",
    "riddles": "fortunes-min",
    "wisdom": "fortunes",
    "humorists": "fortunes",
    "science": "fortunes",
    "education": "fortunes",
    "people": "fortunes",
}
COPYRIGHT_PACKAGES = ("wordnet-base", "manpages", "tzdata", "iso-codes", "fortunes-min", "fortunes")

# SPDX ids accepted in the sources of the manpages package -> its Debian licence name.
MAN_SPDX_LICENCES = {
    "Linux-man-pages-copyleft": "Linux-man-pages-copyleft",
    "GPL-2.0-or-later": "GPL-2+",
    "GPL-1.0-or-later": "GPL-1+",
}
# (licence, pattern) accepted in a page's rendered COPYRIGHT / LICENSE section; first match wins.
MAN_SECTION_LICENCES = (
    ("GPL-3.0-or-later", re.compile(r"GPLv3\+|GNU GPL version 3 or later")),
    (
        "GFDL-1.3-or-later (no invariant sections)",
        re.compile(
            r"GNU Free Documentation License, Version 1\.3 or any later version.*no Invariant Sections"
        ),
    ),
    ("Apache-2.0", re.compile(r"Apache License 2\.0|Apache License, Version 2\.0")),
    ("GPL (or the Less License)", re.compile(r"GNU General Public License.*Less License")),
)
# Full licence texts (from base-files) reproduced in LICENSE for the licences above.
LICENCE_TEXTS: dict[str, str | None] = {
    "GPL-3.0-or-later": "GPL-3",
    "GPL-2+": "GPL-2",
    "GPL-1+": "GPL-1",
    "GFDL-1.3-or-later (no invariant sections)": "GFDL-1.3",
    "Apache-2.0": "Apache-2.0",
    "GPL (or the Less License)": "GPL-3",
    "Linux-man-pages-copyleft": None,  # its text is in the manpages copyright file (section C)
}
# Pages about a topic rather than a command.
MAN_EXCLUDED_PAGES = frozenset(
    {
        "intro",
        "openssl-cmds",
        "openssl-format-options",
        "openssl-namedisplay-options",
        "openssl-passphrase-options",
        "openssl-verification-options",
    }
)
MAX_SUMMARY_CHARS = 80

WORD_MEANING_MIN_TAGS = 1
DISTRACTOR_LENGTH_RATIO = 1.5  # distractor definitions are 1/1.5 .. 1.5 times the gold's length
WORD_MEANING_POS = {"noun": "noun", "verb": "verb", "adj": "adjective"}
CITIES_PER_COUNTRY = 2
PROSE_MIN_CHARS, PROSE_MAX_CHARS = 200, 600

PROMPTS = {
    "man-commands": "What does the command `{}` do? Answer in a few words.",
    "hypernyms": 'What kind of thing is "{}"? Answer with one word or a short phrase.',
    "antonyms": 'What is the opposite of the adjective "{}"? Answer with one word.',
    "adjective-attributes": 'Which attribute does the adjective "{}" describe? Answer with one word.',
    "word-meaning": 'What does the {} "{}" mean?',
    "city-country": "In which country is the city of {}?",
    "city-country-open": "In which country is the city of {}? Answer with the country name only.",
}

ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
OVERSTRIKE = re.compile(r".\x08")
SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*(\S+)")
COPYRIGHT_LINE = re.compile(r"copyright|\(c\)|©", re.IGNORECASE)
NAME_DASH = re.compile(r"\s+[-\u2010\u2011\u2012\u2013\u2014\u2212]+\s+")
LICENCE_HEADING = re.compile(r"(?:COPYRIGHT|LICEN[CS]E|COPYING)")
SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z])")
ONE_WORD = re.compile(r"[a-z]+")
LOWER_PHRASE = re.compile(r"[a-z][a-z' -]*[a-z]")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Very long lines (-rLL) so a paragraph is one line; -rcR=1: one continuous page; -P-c: no SGR.
GROFF_COMMAND = ("groff", "-k", "-Kutf-8", "-t", "-man", "-Tutf8", "-P-c", "-Ww", "-rLL=1000n", "-rcR=1")


# --------------------------------------------------------------------------- errors


def missing_source(what: str, path: Path, package: str) -> None:
    """Exit naming the Debian package that provides a missing source and the fix."""
    sys.exit(
        f"error: {what} not found at {path}.\n"
        f"It is shipped by the Debian package '{package}'; install it with:\n"
        f"    sudo apt-get install -y {package}\n"
        "(this script only runs on a developer machine; the committed outputs need nothing)"
    )


def dpkg_list_file(package: str) -> Path | None:
    """dpkg's file list of an installed package (``<pkg>.list`` or ``<pkg>:<arch>.list``)."""
    plain = DPKG_INFO_DIR / f"{package}.list"
    if plain.is_file():
        return plain
    qualified = sorted(DPKG_INFO_DIR.glob(f"{package}:*.list"))
    return qualified[0] if qualified else None


def copyright_file(package: str) -> Path:
    return Path(f"/usr/share/doc/{package}/copyright")


def check_sources() -> None:
    """Fail early, with an actionable message, if any input is missing."""
    for pos in WORDNET_POS:
        for kind in ("data", "index"):
            if not (WORDNET_DIR / f"{kind}.{pos}").is_file():
                missing_source(
                    f"WordNet 3.0 file {kind}.{pos}", WORDNET_DIR / f"{kind}.{pos}", "wordnet-base"
                )
    for package in MAN_PACKAGES:
        if dpkg_list_file(package) is None:
            missing_source(f"file list of {package}", DPKG_INFO_DIR / f"{package}.list", package)
    for path, package in ((ZONE_TAB, "tzdata"), (ISO_3166_1, "iso-codes")):
        if not path.is_file():
            missing_source(path.name, path, package)
    for name, package in FORTUNE_FILES.items():
        if not (FORTUNE_DIR / name).is_file():
            missing_source(f"fortune file {name}", FORTUNE_DIR / name, package)
    for package in COPYRIGHT_PACKAGES:
        if not copyright_file(package).is_file():
            missing_source(f"the copyright file of {package}", copyright_file(package), package)
    for text in sorted({name for name in LICENCE_TEXTS.values() if name is not None} | {"LGPL-2.1"}):
        if not (COMMON_LICENSES_DIR / text).is_file():
            missing_source(f"licence text {text}", COMMON_LICENSES_DIR / text, "base-files")
    if shutil.which("groff") is None:
        missing_source("the groff troff renderer", Path("/usr/bin/groff"), "groff-base")


# --------------------------------------------------------------------------- hashing / io


def hash_key(text: str, seed: int) -> tuple[str, str]:
    """Stable sort key: sha1 of the seed-salted text, the text itself as tie-break."""
    return hashlib.sha1(f"{seed}\x00{text}".encode()).hexdigest(), text


def hash_sorted(items: Iterable[str], seed: int, salt: str = "") -> list[str]:
    return sorted(items, key=lambda item: hash_key(f"{salt}{item}", seed))


def write_jsonl(path: Path, rows: Iterable[dict[str, object]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def collapse(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return " ".join(text.split())


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
    pos: str  # n, v, a, s, r
    words: tuple[str, ...]
    pointers: tuple[Pointer, ...]
    gloss: str

    @property
    def definition(self) -> str:
        """The gloss without the quoted usage examples that follow the definition."""
        return self.gloss.split('; "', 1)[0].strip().rstrip(";").strip()


@dataclass(frozen=True)
class IndexEntry:
    lemma: str  # underscores as spaces, lower case (as in index.*)
    offsets: tuple[int, ...]  # synsets in sense order (most frequent first)
    tagsense_cnt: int  # senses tagged in the semantic concordances


@dataclass
class WordNet:
    synsets: dict[str, dict[int, Synset]]  # "noun" -> offset -> synset
    index: dict[str, dict[str, IndexEntry]]  # "noun" -> lemma -> entry

    def tags(self, pos: str, lemma: str) -> int:
        entry = self.index[pos].get(lemma.casefold())
        return entry.tagsense_cnt if entry else 0


def is_common_word(synset: Synset, lemma: str) -> bool:
    """Whether ``lemma`` is spelt in lower case in ``synset`` (not a proper noun)."""
    return any(word == lemma for word in synset.words)


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


def parse_index_line(line: str) -> IndexEntry | None:
    """Parse one ``index.*`` line: lemma pos synset_cnt p_cnt [ptr]* sense_cnt tagsense_cnt offsets."""
    if line.startswith("  "):
        return None
    parts = line.split()
    synset_cnt, p_cnt = int(parts[2]), int(parts[3])
    tagsense_cnt = int(parts[5 + p_cnt])
    offsets = tuple(int(offset) for offset in parts[6 + p_cnt : 6 + p_cnt + synset_cnt])
    return IndexEntry(parts[0].replace("_", " "), offsets, tagsense_cnt)


def read_wordnet() -> WordNet:
    synsets: dict[str, dict[int, Synset]] = {}
    index: dict[str, dict[str, IndexEntry]] = {}
    for pos in WORDNET_POS:
        with open(WORDNET_DIR / f"data.{pos}", encoding="utf-8") as handle:
            parsed = (parse_synset_line(line.rstrip("\n")) for line in handle)
            synsets[pos] = {synset.offset: synset for synset in parsed if synset is not None}
        with open(WORDNET_DIR / f"index.{pos}", encoding="utf-8") as handle:
            entries = (parse_index_line(line.rstrip("\n")) for line in handle)
            index[pos] = {entry.lemma: entry for entry in entries if entry is not None}
    return WordNet(synsets, index)


# --------------------------------------------------------------------------- pairs / splits


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    group: str  # pairs of one group always share a split
    words: tuple[str, ...] = ()  # words / names the pair uses (kept out of the probes)
    synsets: tuple[int, ...] = ()  # WordNet synset offsets the pair uses
    source: str = ""  # provenance (man page), not written


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """First pair per prompt (case-folded)."""
    seen: set[str] = set()
    result = []
    for pair in pairs:
        if pair.prompt.casefold() not in seen:
            seen.add(pair.prompt.casefold())
            result.append(pair)
    return result


def split_pairs(
    pairs: list[Pair], n_train: int, n_test: int, seed: int, task: str
) -> tuple[list[Pair], list[Pair]]:
    """Groups in hash order; test is filled first, then train.

    A group never straddles splits: when it does not fit in what is left of a split,
    its surplus pairs are dropped (not moved to the next split).
    """
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in unique_pairs(pairs):
        groups[pair.group].append(pair)
    splits: dict[str, list[Pair]] = {"test": [], "train": []}
    sizes = {"test": n_test, "train": n_train}
    current = "test"
    for group in hash_sorted(groups, seed):
        if len(splits[current]) >= sizes[current]:
            if current == "train":
                break
            current = "train"
        members = sorted(groups[group], key=lambda pair: pair.prompt)
        splits[current].extend(members[: sizes[current] - len(splits[current])])
    for split, size in sizes.items():
        if len(splits[split]) < size:
            sys.exit(f"error: {task}: only {len(splits[split])} {split} pairs available, {size} requested")
    return splits["train"], splits["test"]


# --------------------------------------------------------------------------- man-commands


@dataclass(frozen=True)
class ManPage:
    package: str
    path: Path
    command: str
    summary: str
    licence: str
    copyright: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.path.parent.name}/{self.path.name.removesuffix('.gz')}"


def man_page_paths(package: str) -> list[Path]:
    """Regular (non-symlink) page files of one package in sections 1 and 8, sorted."""
    listing = dpkg_list_file(package)
    assert listing is not None
    pattern = re.compile(r"^/usr/share/man/man[" + "".join(MAN_SECTIONS) + r"]/[^/]+\.gz$")
    paths = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        path = Path(line)
        if pattern.match(line) and path.is_file() and not path.is_symlink():
            paths.append(path)
    return sorted(set(paths))


def render_man_page(source: bytes) -> str:
    """troff source -> plain UTF-8 text with overstrikes removed."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    result = subprocess.run(GROFF_COMMAND, input=source, capture_output=True, env=env, check=True)
    return OVERSTRIKE.sub("", result.stdout.decode("utf-8", errors="replace")).replace("\x08", "")


def sections_of(rendered: str) -> dict[str, list[str]]:
    """Top-level sections of a rendered page: heading -> its paragraphs (whitespace collapsed).

    With ``-rLL=1000n`` groff puts every paragraph on one line.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in rendered.split("\n"):
        if line.strip() and not line[0].isspace():
            current = sections.setdefault(line.strip(), [])
        elif current is not None and line.strip():
            current.append(collapse(line))
    return sections


def source_licence(source: str) -> tuple[str | None, list[str]]:
    """SPDX id and copyright lines from the comment preamble of a troff source."""
    spdx, lines = None, []
    for line in source.splitlines():
        if not (line.startswith('.\\"') or line.startswith("'\\\"")):
            if line.startswith(".TH"):
                break
            continue
        comment = line[3:].strip()
        match = SPDX_LINE.search(comment)
        if match:
            spdx = match.group(1)
        elif COPYRIGHT_LINE.search(comment):
            lines.append(collapse(comment))
    return spdx, lines


def copyright_notice(paragraph: str) -> str:
    """The copyright sentence of a paragraph (plus a following "All rights reserved.")."""
    sentences = SENTENCE_END.split(paragraph[paragraph.index("Copyright") :])
    notice = sentences[0]
    if len(sentences) > 1 and sentences[1].casefold().startswith("all rights reserved"):
        notice += " " + sentences[1]
    return notice


def section_licence(sections: dict[str, list[str]]) -> tuple[str | None, list[str]]:
    """Licence named in a COPYRIGHT / LICENSE section, with that section's copyright notices."""
    for heading, paragraphs in sections.items():
        if not LICENCE_HEADING.match(heading):
            continue
        body = " ".join(paragraphs)
        for licence, pattern in MAN_SECTION_LICENCES:
            if pattern.search(body):
                return licence, [copyright_notice(p) for p in paragraphs if "Copyright" in p]
    return None, []


def normalise_summary(summary: str) -> str:
    summary = collapse(summary).rstrip(".").strip()
    words = summary.split(" ")
    following = words[1] if len(words) > 1 else ""
    if words[0][:1].isupper() and words[0][1:2].islower() and not following[:1].isupper():
        summary = summary[0].lower() + summary[1:]
    return summary


def command_name(package: str, stem: str, names: list[str]) -> str:
    folded = [name.casefold() for name in names]
    command = stem if stem.casefold() in folded else names[0]
    if package == "openssl" and command.startswith("openssl-"):
        command = "openssl " + command.removeprefix("openssl-")
    return command


def parse_man_page(package: str, path: Path, source: bytes, rendered: str) -> ManPage | None:
    """The page's command, summary, licence and copyright lines; ``None`` if unusable."""
    stem = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    if stem in MAN_EXCLUDED_PAGES:
        return None
    sections = sections_of(rendered)
    name_line = " ".join(sections.get("NAME", []))
    parts = NAME_DASH.split(name_line, maxsplit=1)
    if len(parts) != 2:
        return None
    names = [name.strip() for name in parts[0].split(",") if name.strip()]
    if not names:
        return None
    text = source.decode("utf-8", errors="replace")
    spdx, copyright_lines = source_licence(text)
    if package == "manpages":
        licence = MAN_SPDX_LICENCES.get(spdx or "")
    else:
        licence, copyright_lines = section_licence(sections)
    if licence is None:
        return None
    summary = normalise_summary(parts[1])
    if not summary or len(summary) > MAX_SUMMARY_CHARS:
        return None
    return ManPage(
        package, path, command_name(package, stem, names), summary, licence, tuple(copyright_lines)
    )


def read_man_pages(workers: int) -> tuple[list[ManPage], dict[str, int]]:
    """Usable pages of all :data:`MAN_PACKAGES`, plus the per-package count of pages looked at."""
    jobs: list[tuple[str, Path, bytes]] = []
    looked_at: dict[str, int] = {}
    for package in MAN_PACKAGES:
        paths = man_page_paths(package)
        looked_at[package] = len(paths)
        for path in paths:
            source = gzip.decompress(path.read_bytes())
            if not source.lstrip().startswith(b".so "):
                jobs.append((package, path, source))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rendered = list(pool.map(render_man_page, (source for _, _, source in jobs)))
    pages = []
    for (package, path, source), text in zip(jobs, rendered, strict=True):
        page = parse_man_page(package, path, source, text)
        if page is not None:
            pages.append(page)
    return pages, looked_at


def man_command_pairs(pages: list[ManPage]) -> list[Pair]:
    """One pair per command (first page in package/path order); equal summaries share a group."""
    pairs = []
    for page in pages:
        pairs.append(
            Pair(
                PROMPTS["man-commands"].format(page.command),
                page.summary,
                group=page.summary.casefold(),
                words=(page.command.casefold(),),
                source=page.name,
            )
        )
    return pairs


# --------------------------------------------------------------------------- WordNet tasks


def hypernym_pairs(wordnet: WordNet) -> list[Pair]:
    nouns = wordnet.synsets["noun"]
    pairs = []
    for lemma, entry in wordnet.index["noun"].items():
        if len(entry.offsets) != 1 or entry.tagsense_cnt < 1 or not LOWER_PHRASE.fullmatch(lemma):
            continue
        synset = nouns[entry.offsets[0]]
        if not is_common_word(synset, lemma):
            continue
        hypernyms = [p for p in synset.pointers if p.symbol == "@"]
        if len(hypernyms) != 1 or any(p.symbol == "@i" for p in synset.pointers):
            continue
        target = nouns[hypernyms[0].offset]
        answer = target.words[0]
        lemma_words, answer_words = set(lemma.split()), set(answer.casefold().split())
        if (
            len(answer.split()) > 3
            or answer.casefold() in lemma
            or lemma in answer.casefold()
            or lemma_words & answer_words
        ):
            continue
        prompt = PROMPTS["hypernyms"].format(lemma)
        pairs.append(
            Pair(
                prompt,
                answer,
                group=prompt,
                words=(lemma, answer.casefold()),
                synsets=(synset.offset, target.offset),
            )
        )
    return pairs


def antonym_pairs(wordnet: WordNet) -> list[Pair]:
    """Direct antonyms from ``!`` pointers; adjectives with several antonyms are dropped."""
    adjectives = wordnet.synsets["adj"]
    antonyms: dict[str, dict[str, str]] = defaultdict(dict)
    synsets_of: dict[str, set[int]] = defaultdict(set)
    for synset in adjectives.values():
        for pointer in synset.pointers:
            if pointer.symbol != "!" or pointer.pos not in ("a", "s") or pointer.offset not in adjectives:
                continue
            source = synset.words[pointer.source - 1]
            target = adjectives[pointer.offset].words[pointer.target - 1]
            if source.casefold() == target.casefold():
                continue
            antonyms[source.casefold()].setdefault(target.casefold(), target)
            synsets_of[source.casefold()].add(synset.offset)
    pairs = []
    for key in sorted(antonyms):
        if len(antonyms[key]) != 1:
            continue
        ((target_key, target),) = antonyms[key].items()
        if not (ONE_WORD.fullmatch(key) and ONE_WORD.fullmatch(target_key)):
            continue
        if wordnet.tags("adj", key) < 1 or wordnet.tags("adj", target_key) < 1:
            continue
        group = "\x00".join(sorted((key, target_key)))
        used = tuple(sorted(synsets_of[key] | synsets_of[target_key]))
        pairs.append(
            Pair(PROMPTS["antonyms"].format(key), target, group, words=(key, target_key), synsets=used)
        )
    return pairs


def attribute_pairs(wordnet: WordNet) -> list[Pair]:
    """Adjective -> the attribute noun of its ``=`` pointers, when all its senses agree."""
    adjectives, nouns = wordnet.synsets["adj"], wordnet.synsets["noun"]
    attributes: dict[str, set[str]] = defaultdict(set)
    synsets_of: dict[str, set[int]] = defaultdict(set)
    for synset in adjectives.values():
        targets = [nouns[p.offset] for p in synset.pointers if p.symbol == "=" and p.pos == "n"]
        for target in targets:
            for word in synset.words:
                attributes[word.casefold()].add(target.words[0])
                synsets_of[word.casefold()].update((synset.offset, target.offset))
    pairs = []
    for key in sorted(attributes):
        if len(attributes[key]) != 1 or not ONE_WORD.fullmatch(key):
            continue
        (answer,) = attributes[key]
        if not ONE_WORD.fullmatch(answer) or answer in key or key in answer:
            continue
        prompt = PROMPTS["adjective-attributes"].format(key)
        pairs.append(
            Pair(prompt, answer, group=prompt, words=(key, answer), synsets=tuple(sorted(synsets_of[key])))
        )
    return pairs


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Choice:
    key: str  # identity for de-duplication (case-folded)
    text: str


def place_answers(
    items: list[tuple[str, str, Choice, list[Choice]]], seed: int, task: str
) -> list[dict[str, object]]:
    """Rows with the gold choice at a balanced, hash-determined position.

    ``items`` are ``(key, prompt, gold, distractors)``; the item of rank ``r`` in the
    ``sha1(seed, "position", key)`` order gets its gold choice at index ``r % 4``.
    """
    rank = {
        key: r for r, key in enumerate(hash_sorted((key for key, *_ in items), seed, salt="position\x00"))
    }
    rows = []
    for key, prompt, gold, distractors in items:
        position = rank[key] % N_CHOICES
        choices = [d.text for d in distractors[: N_CHOICES - 1]]
        choices.insert(position, gold.text)
        rows.append({"task": task, "prompt": prompt, "choices": choices, "answer": position})
    return rows


def monosemous_definitions(
    wordnet: WordNet, pos: str, banned_words: set[str], banned_synsets: set[int]
) -> dict[str, str]:
    """Probe candidates of one part of speech: ``{lemma: definition of its only sense}``."""
    synsets = wordnet.synsets[pos]
    candidates = {}
    for lemma, entry in wordnet.index[pos].items():
        if len(entry.offsets) != 1 or entry.tagsense_cnt < WORD_MEANING_MIN_TAGS:
            continue
        if not ONE_WORD.fullmatch(lemma) or lemma in banned_words or entry.offsets[0] in banned_synsets:
            continue
        if not is_common_word(synsets[entry.offsets[0]], lemma):
            continue
        definition = synsets[entry.offsets[0]].definition
        if not 15 <= len(definition) <= 90 or re.search(rf"\b{re.escape(lemma)}", definition, re.IGNORECASE):
            continue
        candidates[lemma] = definition
    return candidates


def word_meaning_probe(
    wordnet: WordNet, banned_words: set[str], banned_synsets: set[int], per_pos: int, seed: int
) -> tuple[list[dict[str, object]], dict[str, int]]:
    items: list[tuple[str, str, Choice, list[Choice]]] = []
    counts = {}
    for pos, pos_name in WORD_MEANING_POS.items():
        candidates = monosemous_definitions(wordnet, pos, banned_words, banned_synsets)
        counts[pos_name] = len(candidates)
        taken = {
            key.split("\x00")[1] for key, *_ in items
        }  # a word is asked about once, in one part of speech
        chosen = [w for w in hash_sorted(candidates, seed, salt="word-meaning\x00") if w not in taken][
            :per_pos
        ]
        if len(chosen) < per_pos:
            sys.exit(f"error: word-meaning: only {len(chosen)} {pos_name} candidates, {per_pos} requested")
        for lemma in chosen:
            gold = Choice(candidates[lemma].casefold(), candidates[lemma])
            low, high = len(gold.text) / DISTRACTOR_LENGTH_RATIO, len(gold.text) * DISTRACTOR_LENGTH_RATIO
            distractors: list[Choice] = []
            seen = {gold.key}
            for other in hash_sorted(
                (w for w in candidates if w != lemma), seed, salt=f"distractor\x00{lemma}\x00"
            ):
                definition = candidates[other]
                if definition.casefold() in seen or not low <= len(definition) <= high:
                    continue
                seen.add(definition.casefold())
                distractors.append(Choice(definition.casefold(), definition))
                if len(distractors) == N_CHOICES - 1:
                    break
            items.append(
                (f"{pos}\x00{lemma}", PROMPTS["word-meaning"].format(pos_name, lemma), gold, distractors)
            )
    order = hash_sorted((key for key, *_ in items), seed, salt="word-meaning-order\x00")
    by_key = {item[0]: item for item in items}
    return place_answers([by_key[key] for key in order], seed, "word-meaning"), counts


def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> short English name (names with ',' or '(' left out)."""
    entries = json.loads(ISO_3166_1.read_text(encoding="utf-8"))["3166-1"]
    names = {}
    for entry in entries:
        name = entry.get("common_name", entry["name"])
        if "," not in name and "(" not in name:
            names[entry["alpha_2"]] = name
    return names


def read_zones() -> list[tuple[str, str, str]]:
    """``(country code, area, city)`` from zone.tab, in file order."""
    zones = []
    for line in ZONE_TAB.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        code, _coordinates, tz = line.split("\t")[:3]
        area, city = tz.split("/")[0], tz.split("/")[-1].replace("_", " ")
        zones.append((code, area, city))
    return zones


def city_country_probe(
    banned_words: set[str], n_items: int, n_open: int, seed: int
) -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, int]]:
    """The multiple-choice rows (first ``n_items`` cities) and the open rows (next ``n_open``)."""
    names = country_names()
    zones = [
        (code, area, city)
        for code, area, city in read_zones()
        if code in names
        and area != "Antarctica"
        and city.casefold() not in names[code].casefold()
        and names[code].casefold() not in city.casefold()
        and city.casefold() not in banned_words
    ]
    countries_in_area: dict[str, set[str]] = defaultdict(set)
    for code, area, _ in zones:
        countries_in_area[area].add(code)
    per_country: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for zone in sorted(zones, key=lambda zone: hash_key(zone[2], seed)):
        if len(per_country[zone[0]]) < CITIES_PER_COUNTRY:
            per_country[zone[0]].append(zone)
    kept = [zone for zones_of in per_country.values() for zone in zones_of]
    ordered = sorted(kept, key=lambda zone: hash_key(f"city-country\x00{zone[2]}", seed))
    chosen, open_chosen = ordered[:n_items], ordered[n_items : n_items + n_open]
    if len(open_chosen) < n_open:
        sys.exit(f"error: city-country: only {len(ordered)} cities, {n_items} + {n_open} requested")
    items = []
    for code, area, city in chosen:
        pool = countries_in_area[area] - {code}
        if len(pool) < N_CHOICES - 1:
            pool = set(names) - {code}
        others = hash_sorted(pool, seed, salt=f"distractor\x00{city}\x00")[: N_CHOICES - 1]
        gold = Choice(code, names[code])
        items.append(
            (city, PROMPTS["city-country"].format(city), gold, [Choice(o, names[o]) for o in others])
        )
    open_rows: list[dict[str, object]] = [
        {
            "task": "city-country-open",
            "prompt": PROMPTS["city-country-open"].format(city),
            "response": names[code],
        }
        for code, _area, city in open_chosen
    ]
    stats = {"zones": len(read_zones()), "usable": len(zones), "after per-country cap": len(kept)}
    return place_answers(items, seed, "city-country"), open_rows, stats


def fortune_passages(name: str) -> list[str]:
    """Normalised passages of one fortune file that are 200..600 characters long."""
    raw = (FORTUNE_DIR / name).read_bytes().decode("utf-8", errors="replace")
    passages = []
    for block in re.split(r"^%$", raw, flags=re.M):
        if "\ufffd" in block or CONTROL_CHARS.search(block):
            continue
        lines = [collapse(line) for line in block.strip("\n").split("\n")]
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        letters = sum(ch.isalpha() for ch in text)
        if PROSE_MIN_CHARS <= len(text) <= PROSE_MAX_CHARS and letters >= 0.6 * len(text):
            passages.append(text)
    return passages


def prose_probe(n_items: int, seed: int) -> tuple[list[dict[str, object]], dict[str, object]]:
    source_of: dict[str, str] = {}
    counts = {}
    for name in FORTUNE_FILES:
        passages = fortune_passages(name)
        counts[name] = len(passages)
        for text in passages:
            source_of.setdefault(text, name)
    chosen = hash_sorted(source_of, seed, salt="prose-ppl\x00")[:n_items]
    if len(chosen) < n_items:
        sys.exit(f"error: prose-ppl: only {len(chosen)} passages, {n_items} requested")
    used: dict[str, int] = defaultdict(int)
    for text in chosen:
        used[source_of[text]] += 1
    stats: dict[str, object] = {
        f"{name} (used/candidates)": f"{used[name]}/{counts[name]}" for name in FORTUNE_FILES
    }
    return [{"task": "prose-ppl", "text": text} for text in chosen], stats


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


def section(title: str, body: str) -> str:
    rule = "=" * 78
    return f"{rule}\n{title}\n{rule}\n\n{body.rstrip()}\n\n"


def debian_licence_paragraph(path: Path, name: str) -> str:
    """The stand-alone ``License: <name>`` paragraph of a machine-readable copyright file
    (the one that starts a paragraph and carries the licence text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line == f"License: {name}"
        and (i == 0 or not lines[i - 1].strip())
        and lines[i + 1 : i + 2] != [""]
    )
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        body.append("" if line.strip() == "." else line[1:].rstrip())
    return "\n".join(body).strip() + "\n"


def licence_file(pages: list[ManPage]) -> str:
    licences = sorted({page.licence for page in pages})
    texts = sorted({text for licence in licences if (text := LICENCE_TEXTS[licence]) is not None})
    attribution = "\n".join(
        f"{page.name} ({page.package}) [{page.licence}]: {'; '.join(page.copyright) or 'see below'}"
        for page in pages
    )
    text = (
        "Licences of the data in this directory (train.jsonl, test.jsonl, probes.jsonl,\n"
        "tasks.json, probes.json)\n\n"
        "The rows are derived from text shipped by Debian packages; each part keeps the\n"
        "licence of its source. The Apache-2.0 licence of the clight code does NOT apply to them.\n\n"
        '1. tasks "hypernyms", "antonyms", "adjective-attributes" and probe "word-meaning":\n'
        "   WordNet 3.0 (Debian package wordnet-base).\n"
        "   WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.\n"
        "   Licence: the WordNet 3.0 licence, in section A.\n\n"
        '2. task "man-commands": the one-line NAME summaries of the manual pages listed in\n'
        "   section B (Debian packages " + ", ".join(MAN_PACKAGES) + ").\n"
        "   Only pages that state their own licence were used: an SPDX-License-Identifier in\n"
        "   the page source (manpages: Linux-man-pages-copyleft, GPL-2.0-or-later,\n"
        "   GPL-1.0-or-later) or a COPYRIGHT section naming GPLv3+, the GFDL 1.3 or later with\n"
        "   no Invariant Sections, the Apache License 2.0, or the GPL / Less License. Section B\n"
        "   lists every page used with its licence and the copyright lines of the page, as the\n"
        "   Linux-man-pages-copyleft licence requires for processed versions. The licence\n"
        "   texts are in sections C (man-pages licences, from /usr/share/doc/manpages/copyright)\n"
        "   and F (full texts from /usr/share/common-licenses: " + ", ".join(texts) + ").\n\n"
        '3. probes "city-country", "city-country-open": city names from the zone names of zone.tab (Debian package\n'
        "   tzdata; public domain, section D) and country names from iso_3166-1.json (Debian\n"
        "   package iso-codes; LGPL-2.1-or-later, section E; full LGPL-2.1 text in section F).\n\n"
        '4. probe "prose-ppl": passages of the fortune cookie files ' + ", ".join(FORTUNE_FILES) + "\n"
        "   (Debian packages fortunes-min and fortunes, from the BSD fortune distribution),\n"
        "   distributed under the BSD licence of their Debian copyright file, in section G.\n"
        "   Each passage is a quotation or joke credited (in the text) to its author where\n"
        "   known; they are redistributed here as Debian distributes them.\n\n"
    )
    text += section(
        "A. WordNet 3.0 (/usr/share/doc/wordnet-base/copyright, verbatim)",
        copyright_file("wordnet-base").read_text(encoding="utf-8"),
    )
    text += section("B. Man pages used: page (package) [licence]: copyright lines from the page", attribution)
    man_copyright = copyright_file("manpages")
    man_licences = sorted({licence for licence in licences if licence in MAN_SPDX_LICENCES.values()})
    text += section(
        "C. man-pages licences (stand-alone License paragraphs of /usr/share/doc/manpages/copyright)",
        "\n".join(
            f"License: {name}\n\n{debian_licence_paragraph(man_copyright, name)}" for name in man_licences
        ),
    )
    zone_header = "\n".join(
        line for line in ZONE_TAB.read_text(encoding="utf-8").splitlines()[:5] if line.startswith("#")
    )
    text += section(
        "D. tzdata (/usr/share/doc/tzdata/copyright and the zone.tab header, verbatim)",
        copyright_file("tzdata").read_text(encoding="utf-8").rstrip() + "\n\n" + zone_header,
    )
    text += section(
        "E. iso-codes (/usr/share/doc/iso-codes/copyright, verbatim)",
        copyright_file("iso-codes").read_text(encoding="utf-8"),
    )
    for number, name in enumerate(sorted({*texts, "LGPL-2.1"}), start=1):
        text += section(
            f"F{number}. {name} (/usr/share/common-licenses/{name}, verbatim)",
            (COMMON_LICENSES_DIR / name).read_text(encoding="utf-8"),
        )
    fortunes_copyright = copyright_file("fortunes-min").read_text(encoding="utf-8")
    same = fortunes_copyright == copyright_file("fortunes").read_text(encoding="utf-8")
    title = "G. fortune files (/usr/share/doc/fortunes-min/copyright, verbatim"
    title += "; /usr/share/doc/fortunes/copyright is byte-identical)" if same else ")"
    text += section(title, fortunes_copyright)
    if not same:
        text += section(
            "G2. fortune files (/usr/share/doc/fortunes/copyright, verbatim)",
            copyright_file("fortunes").read_text(encoding="utf-8"),
        )
    return text.rstrip() + "\n"


def readme(
    args: argparse.Namespace,
    counts: dict[str, tuple[int, int, int]],
    man_stats: dict[str, tuple[int, int]],
    probe_stats: dict[str, dict[str, object]],
    probe_sizes: dict[str, int],
    versions: dict[str, str],
) -> str:
    task_rows = "\n".join(
        f"| {i} | `{name}` | {cand} | {train} | {test} | `` {PROMPTS[name]} `` |"
        for i, (name, (cand, train, test)) in enumerate(counts.items())
    )
    probe_rows = "\n".join(f"| `{name}` | {PROBE_KINDS[name]} | {probe_sizes[name]} |" for name in PROBES)
    man_rows = "\n".join(f"| `{pkg}` | {looked} | {used} |" for pkg, (looked, used) in man_stats.items())
    stat_lines = "\n".join(
        f"- `{probe}`: " + ", ".join(f"{key} {value}" for key, value in stats.items())
        for probe, stats in probe_stats.items()
    )
    stat_lines = "Candidates and selection counts:\n\n" + stat_lines
    versions_lines = "\n".join(f"- `{name}` {version}" for name, version in versions.items())
    return f"""# LLM instruction stream and general-ability probes

Data for continually fine-tuning a small pretrained instruction LLM (built for
SmolLM2-135M-Instruct) on four short-answer tasks and for measuring what it forgets.
Everything is derived from text shipped by Debian packages (see `LICENSE`).

## Stream (`train.jsonl`, `test.jsonl`)

Every line is `{{"task": ..., "prompt": ..., "response": ...}}`; lines are grouped by task in
stream order (`tasks.json`, a list of `{{"name": ...}}`) and in hash order within a task.
Responses are short: a few words (`man-commands`) or one word / short phrase.

| # | task | candidate pairs | train | test | prompt |
|---|------|----------------:|------:|-----:|--------|
{task_rows}

- `man-commands`: the NAME summary of the command's manual page (sections 1 and 8) from
  {", ".join(f"`{p}`" for p in MAN_PACKAGES)};
  only pages that state their own licence
  (SPDX id in the source, or a COPYRIGHT section naming GPLv3+, GFDL-1.3+ without invariant
  sections, Apache-2.0, or GPL / Less License); summaries of at most {MAX_SUMMARY_CHARS}
  characters. Pages with the same summary (`ls`, `dir`, `vdir`) share a split.
- `hypernyms`: first lemma of the WordNet 3.0 hypernym of a monosemous, SemCor-tagged,
  lower-case noun with one hypernym; answers of at most three words that share no word with
  the noun.
- `antonyms`: the direct antonym (`!` pointer) of a one-word adjective with exactly one
  antonym, both SemCor-tagged; both directions of a pair share a split.
- `adjective-attributes`: the noun of the `=` (attribute) pointer of an adjective whose
  senses all name the same one-word attribute (heavy -> weight).

Man pages per package (pages in sections 1 and 8 / pages used as candidates):

| package | pages | usable |
|---------|------:|-------:|
{man_rows}

Selection: candidates are de-duplicated by prompt and their groups ordered by
`sha1("{args.seed}\\x00" + key)`; the first {args.test_per_task} pairs form the test split and the
next {args.train_per_task} the train split. Train and test share no prompt.

## Probes (`probes.jsonl`, eval only; never train on them)

`probes.json` lists them with their kind and size. None of their words (word-meaning)
or cities is a word, answer or command of the stream.

| probe | kind | items |
|-------|------|------:|
{probe_rows}

- `word-meaning`: `{PROMPTS["word-meaning"].format("<noun|verb|adjective>", "<w>")}` Rows
  `{{"task", "prompt", "choices": [4 definitions], "answer": <index>}}`. Gold: the WordNet
  definition of the word's only sense; distractors: definitions of other monosemous words
  of the same part of speech, each within a factor {DISTRACTOR_LENGTH_RATIO} of the gold's
  length. Equal numbers of nouns, verbs and adjectives, all monosemous in that part of
  speech with a SemCor tag count >= {WORD_MEANING_MIN_TAGS}.
- `city-country`: `{PROMPTS["city-country"].format("<city>")}` Cities from tzdata's
  `zone.tab`, countries from iso-codes (ISO 3166-1 short names); distractors are countries
  of the same tz area (Europe, America, Asia, ...); at most {CITIES_PER_COUNTRY} cities per country.
- `city-country-open`: `{PROMPTS["city-country-open"].format("<city>")}`
  -> the country name (rows with `prompt` and `response`), for free generation; other
  cities than those of `city-country` (the next ones in the same hash order). The base
  model answers in sentences, so score it by whether the output contains the gold name
  rather than by exact match.
- `prose-ppl`: `{{"task": "prose-ppl", "text": ...}}`, fortune passages of
  {PROSE_MIN_CHARS}..{PROSE_MAX_CHARS} characters, for perplexity, from the fortune files
  {", ".join(FORTUNE_FILES)}.

In the multiple-choice probes the gold position is balanced over the four slots (item of
rank `r` in a second sha1 order has `answer == r % 4`).

{stat_lines}

`tools/data/check_llm_probes.py` measures the base model on all of this (log-likelihood
multiple choice as lm-evaluation-harness does, greedy exact match / ROUGE-L, perplexity).

## Rebuild

On a Debian/Ubuntu machine with the source packages installed:

```
apt-get install -y {" ".join(SOURCE_PACKAGES)}
python tools/data/build_llm_stream.py
```

The output is byte-identical across runs with the same package versions
(`tests/test_llm_data.py` checks it). Built from:

{versions_lines}

## Licence

Each part keeps the licence of its source: the WordNet 3.0 licence; the licences of the man
pages used (GPL-3.0-or-later, GFDL-1.3-or-later, Apache-2.0, Linux-man-pages-copyleft, ...;
every page is listed with its copyright lines); tzdata (public domain); iso-codes
(LGPL-2.1-or-later); the BSD licence of the fortune files. See [`LICENSE`](LICENSE).
"""


# --------------------------------------------------------------------------- build


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out-root", type=Path, default=Path("clight/data"), help=f"writes <out-root>/{OUT_NAME}"
    )
    parser.add_argument("--seed", type=int, default=0, help="salt of the sha1 ordering")
    parser.add_argument("--train-per-task", type=int, default=160)
    parser.add_argument("--test-per-task", type=int, default=40)
    parser.add_argument("--word-meaning-per-pos", type=int, default=52, help="items per part of speech (x3)")
    parser.add_argument("--city-items", type=int, default=156)
    parser.add_argument("--city-open-items", type=int, default=40)
    parser.add_argument("--prose-items", type=int, default=100)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel groff processes (does not affect the output)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    check_sources()
    versions = package_versions()
    wordnet = read_wordnet()
    pages, looked_at = read_man_pages(args.workers)

    candidates = {
        "man-commands": man_command_pairs(pages),
        "hypernyms": hypernym_pairs(wordnet),
        "antonyms": antonym_pairs(wordnet),
        "adjective-attributes": attribute_pairs(wordnet),
    }
    rows: dict[str, list[dict[str, object]]] = {split: [] for split in SPLITS}
    counts: dict[str, tuple[int, int, int]] = {}
    used_pairs: list[Pair] = []
    for task in STREAM_TASKS:
        train, test = split_pairs(candidates[task], args.train_per_task, args.test_per_task, args.seed, task)
        for split, pairs in (("train", train), ("test", test)):
            rows[split].extend({"task": task, "prompt": p.prompt, "response": p.response} for p in pairs)
        used_pairs.extend(train + test)
        counts[task] = (len(unique_pairs(candidates[task])), len(train), len(test))
        print(
            f"stream {task:22s} candidates {counts[task][0]:6d}  train {len(train):4d}  test {len(test):4d}"
        )

    used_pages = {pair.source for pair in used_pairs if pair.source}
    page_list = [page for page in pages if page.name in used_pages]
    man_stats = {
        package: (looked_at[package], sum(page.package == package for page in pages))
        for package in MAN_PACKAGES
    }
    banned_words = {word for pair in used_pairs for word in pair.words}
    banned_synsets = {offset for pair in used_pairs for offset in pair.synsets}

    word_rows, word_counts = word_meaning_probe(
        wordnet, banned_words, banned_synsets, args.word_meaning_per_pos, args.seed
    )
    city_rows, open_rows, city_stats = city_country_probe(
        banned_words, args.city_items, args.city_open_items, args.seed
    )
    prose_rows, prose_stats = prose_probe(args.prose_items, args.seed)
    probe_rows = {
        "word-meaning": word_rows,
        "city-country": city_rows,
        "city-country-open": open_rows,
        "prose-ppl": prose_rows,
    }
    probe_stats: dict[str, dict[str, object]] = {
        "word-meaning": {f"{pos} candidates": n for pos, n in word_counts.items()},
        "city-country": city_stats,
        "city-country-open": {"cities": len(open_rows)},
        "prose-ppl": prose_stats,
    }

    out = args.out_root / OUT_NAME
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(out / f"{split}.jsonl", rows[split])
    write_jsonl(out / "probes.jsonl", (row for name in PROBES for row in probe_rows[name]))
    write_json(out / "tasks.json", [{"name": name} for name in STREAM_TASKS])
    probe_sizes = {name: len(probe_rows[name]) for name in PROBES}
    write_json(
        out / "probes.json", [{"name": n, "kind": PROBE_KINDS[n], "size": probe_sizes[n]} for n in PROBES]
    )
    (out / "LICENSE").write_text(licence_file(page_list), encoding="utf-8")
    (out / "README.md").write_text(
        readme(args, counts, man_stats, probe_stats, probe_sizes, versions), encoding="utf-8"
    )
    for name in PROBES:
        print(f"probe  {name:22s} items {probe_sizes[name]:4d}  {probe_stats[name]}")
    print(f"wrote {out}/{{train.jsonl,test.jsonl,probes.jsonl,tasks.json,probes.json,LICENSE,README.md}}")


if __name__ == "__main__":
    main()
