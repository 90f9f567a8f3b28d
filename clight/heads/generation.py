"""Greedy generation with a token budget, and the text measures of generated answers (exact match, ROUGE-L)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token-id lists into ``(input_ids, attention_mask)``, both ``(B, T)``: generation appends on the
    right, so every prompt must end at the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(list(seq))
            mask[row, width - len(seq):] = 1
    return ids, mask


def generation_model(backbone: nn.Module) -> nn.Module:
    """The model whose ``generate`` to call: ``torch.compile``'s original module, or the backbone itself (a peft
    model generates through its adapters)."""
    return getattr(backbone, "_orig_mod", backbone)


@torch.no_grad()
def greedy_generate(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                    eos_token_id: int | Sequence[int], pad_token_id: int, do_sample: bool = False) -> Tensor:
    """The new tokens of a greedy continuation of left-padded prompts, ``(B, N)`` with ``N <= max_new_tokens``
    (rows that stopped early end in ``pad_token_id``). Deterministic, so every rank and every resume agrees;
    ``do_sample`` samples instead (from the global RNG: seed it, e.g. under ``torch.random.fork_rng``)."""
    model = generation_model(backbone)
    sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0} if do_sample else {"do_sample": False}
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **sampling)
    return out[:, input_ids.shape[1]:]


def decode_answers(tokenizer, new_tokens: Tensor, stop_ids: Sequence[int]) -> list[str]:
    """Decode each row of generated tokens up to its first stop token, without special tokens."""
    texts = []
    stops = set(int(s) for s in stop_ids)
    for row in new_tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return texts


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_matches(predictions: Sequence[str], references: Sequence[str]) -> Tensor:
    """1.0 where the normalised prediction equals the normalised reference, ``(B,)``."""
    return torch.tensor([float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)])


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> Tensor:
    """ROUGE-L F-measure of every prediction against its reference (torchmetrics' ``rouge_score``), ``(B,)``."""
    from torchmetrics.functional.text import rouge_score

    return torch.stack([rouge_score(p, r, rouge_keys="rougeL")["rougeL_fmeasure"].float()
                        for p, r in zip(predictions, references)]) if predictions else torch.zeros(0)
