"""Tokenizers from local folders (or ``pkg:<package>``); clight never downloads one. A folder without tokenizer
files, and a tokenizer that maps much of the data to its unknown token, are refused before anything trains."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clight.errors import ClightConfigError
from clight.hub import PKG_PREFIX

#: files that hold a tokenizer (its vocabulary, or a config naming a tokenizer class that needs none)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
#: above this share of unknown tokens in a sample of the training text, the tokenizer does not fit the data
MAX_UNK_RATE = 0.25
UNK_SAMPLE_CHARS = 2000  # of each sampled text


def load_tokenizer(spec: str, *, argument: str = "tokenizer", from_model: bool = False) -> Any:
    """Load a tokenizer from a local folder (or ``pkg:<package>``); never from a hub.

    Args:
        spec: the folder, or ``pkg:<package>``.
        argument: the config argument that named it, for error messages.
        from_model: the folder is the model's, used because ``argument`` was left empty.
    """
    from transformers import AutoTokenizer

    if spec.startswith(PKG_PREFIX):
        from clight.hub import resolve_pretrained_path

        path = resolve_pretrained_path(spec, argument=argument, check_weights=False)
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ClightConfigError(
                f"`{argument}`: tokenizer folder {str(path)!r} does not exist; pass a local folder written by "
                "`save_pretrained` (clight does not download tokenizers)."
            )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        where = (f"`{argument}` is empty, so the tokenizer comes from the model folder {str(path)!r}, which"
                 if from_model else f"`{argument}`: {str(path)!r}")
        raise ClightConfigError(
            f"{where} holds no tokenizer files (none of {', '.join(TOKENIZER_FILES[:4])}, ...): transformers would "
            f"build an empty tokenizer and every word would become its unknown token. Give `{argument}` the folder "
            "of the model's tokenizer, or save the tokenizer into the model folder."
        )
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for a broken folder
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ClightConfigError(f"`{argument}`: {str(path)!r} holds no loadable tokenizer: {reason}") from err


def check_unk_rate(tokenizer: Any, texts: Sequence[str], *, argument: str, source: str) -> None:
    """Refuse a tokenizer that maps more than :data:`MAX_UNK_RATE` of the tokens of ``texts`` (a sample of
    ``source``, e.g. "the training text of task 'news'") to its unknown token. Byte-level tokenizers have none and always pass."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return
    ids = tokenizer([t[:UNK_SAMPLE_CHARS] for t in texts], add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    unknown = sum(x.count(unk) for x in ids)
    if total and unknown > MAX_UNK_RATE * total:
        raise ClightConfigError(
            f"`{argument}`: the tokenizer turns {unknown / total:.0%} of the tokens of {source} "
            f"({unknown} of {total} in a sample of {len(texts)} rows) into its unknown token "
            f"{tokenizer.unk_token!r}, so the model would train on noise. Give `{argument}` the tokenizer that "
            "fits the model and the data."
        )
