"""Pure helpers of the freezing and gradient-masking callbacks: parameter selectors, transformer-layer indices,
Half Fine-Tuning's choice, exact top-k masks, magnitude thresholds and bit-packed masks."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

Selector = Callable[[str], bool]

# `encoder.layer.3.`, `model.layers.3.`, `transformer.h.3.`, `blocks.3.`: the index of a transformer layer
LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")
_NORM_MODULE = re.compile(r"(?i)norm|^ln(?:_|\d|$)")  # LayerNorm, input_layernorm, norm, ln_1, ln_f
_ATTENTION_MODULE = re.compile(r"(?i)attn|attention")
_LAYER_RANGE = re.compile(r"^(\d+)(?:-(\d*))?$")
HFT_CATEGORIES = ("attention", "mlp", "norm")


# ---- names ---------------------------------------------------------------------------------------------------
def normalize_name(name: str) -> str:
    """A parameter name without the ``_orig_mod`` segments that ``torch.compile`` inserts."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def layer_index(name: str) -> int | None:
    """The transformer-layer index in a parameter name (``...layer.3.attention...`` -> 3), or None."""
    match = LAYER_PATTERN.search(name)
    return int(match.group(1)) if match else None


def module_path(name: str) -> str:
    """The module that holds a parameter: its name without the last segment."""
    return name.rpartition(".")[0]


def is_bias(name: str) -> bool:
    return name.rpartition(".")[2] == "bias"


def is_norm(name: str) -> bool:
    """Whether a parameter belongs to a normalization module (LayerNorm, RMSNorm, ``ln_1``, ...)."""
    return bool(_NORM_MODULE.search(module_path(name).rpartition(".")[2]))


def is_embedding(name: str) -> bool:
    """Whether a parameter belongs to an embedding module (a path segment containing ``embed``, or GPT-2's
    ``wte``/``wpe``)."""
    return any("embed" in part.lower() or part in ("wte", "wpe") for part in name.split(".")[:-1])


# ---- selectors ---------------------------------------------------------------------------------------------------
def parse_selector(text: str) -> Selector:
    """Turn a selector string into a predicate over (normalized) parameter names.

    - ``re:<regex>``: ``re.search`` on the name;
    - ``layers:<first>-<last>`` (inclusive), ``layers:<i>`` or ``layers:<first>-``: parameters of those
      transformer layers (``layer.<i>.``, ``layers.<i>.``, ``h.<i>.``, ``blocks.<i>.``);
    - text with ``*``, ``?`` or ``[``: a glob on the whole name (``*.bias``);
    - anything else: a dotted run of whole name segments, so ``embeddings`` matches
      ``backbone.embeddings.word_embeddings.weight`` and ``attention.self.query`` matches it in every layer.

    Raises ``ValueError`` with the reason when the text is not a valid selector.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a selector must be a non-empty string")
    if text.startswith("re:"):
        try:
            pattern = re.compile(text[3:])
        except re.error as err:
            raise ValueError(f"invalid regular expression: {err}") from err
        return lambda name: pattern.search(name) is not None
    if text.startswith("layers:"):
        match = _LAYER_RANGE.match(text[7:].strip())
        if match is None:
            raise ValueError("a layer range is `layers:<first>-<last>`, `layers:<i>` or `layers:<first>-`")
        first = int(match.group(1))
        last = math.inf if match.group(2) == "" else int(match.group(2) or first)
        if last < first:
            raise ValueError(f"the layer range is empty ({first} > {last})")
        return lambda name: (i := layer_index(name)) is not None and first <= i <= last
    if any(c in text for c in "*?["):
        return lambda name: fnmatch.fnmatchcase(name, text)
    needle = f".{text.strip('.')}."
    return lambda name: needle in f".{name}."


def select(names: Sequence[str], selectors: Sequence[Selector]) -> set[str]:
    """The names that any of ``selectors`` matches."""
    return {name for name in names if any(sel(name) for sel in selectors)}


# ---- Half Fine-Tuning ------------------------------------------------------------------------------------------
def hft_units(names: Sequence[str]) -> dict[int, dict[str, list[str]]]:
    """Group the modules of every transformer layer into HFT's categories.

    Returns ``{layer index: {"attention": [module paths], "mlp": [...], "norm": [...]}}``: a module is
    ``norm`` if its own name is a normalization (``LayerNorm``, ``input_layernorm``), else ``attention`` if its
    path has an attention segment, else ``mlp``. Modules are listed in the order of ``names``.
    """
    layers: dict[int, dict[str, list[str]]] = {}
    for name in names:
        index = layer_index(name)
        if index is None:
            continue
        unit = module_path(name)
        category = "norm" if is_norm(name) else "attention" if _ATTENTION_MODULE.search(unit) else "mlp"
        group = layers.setdefault(index, {c: [] for c in HFT_CATEGORIES})[category]
        if unit not in group:
            group.append(unit)
    return dict(sorted(layers.items()))


def hft_choose(layers: Mapping[int, Mapping[str, Sequence[str]]], generator: torch.Generator) -> list[str]:
    """Half Fine-Tuning's choice: in every layer, half of each category's modules, drawn with ``generator``.

    A category of ``n`` modules trains ``n // 2`` of them, plus one more on a fair coin when ``n`` is odd (so
    three FFN matrices train one or two, half on average). Draws run layer by layer in ascending order and
    category by category in ``HFT_CATEGORIES`` order, so the same generator state gives the same choice.
    Returns the sorted module paths to train.
    """
    chosen: list[str] = []
    for index in sorted(layers):
        for category in HFT_CATEGORIES:
            units = list(layers[index].get(category, ()))
            n = len(units)
            if n == 0:
                continue
            extra = int(torch.randint(2, (1,), generator=generator)) if n % 2 else 0
            for i in torch.randperm(n, generator=generator)[: n // 2 + extra].tolist():
                chosen.append(units[i])
    return sorted(chosen)


# ---- masks ---------------------------------------------------------------------------------------------------
def topk_mask(scores: Tensor, k: int) -> Tensor:
    """A boolean mask of ``scores``' shape with exactly ``k`` True entries at the largest scores; ties at the
    threshold are broken towards the lower flat index, so the result does not depend on the sort algorithm."""
    flat = scores.reshape(-1).float()
    n = flat.numel()
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k == n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = flat.kthvalue(n - k + 1).values  # the k-th largest
    mask = flat > threshold
    need = k - int(mask.sum())
    ties = (flat == threshold).nonzero().view(-1)[:need]
    mask[ties] = True
    return mask.view(scores.shape)


def topk_masks(scores: Sequence[Tensor], fraction: float, scope: str) -> list[Tensor]:
    """Masks of the top ``fraction`` of entries: per tensor (``scope="tensor"``: ``round(fraction * numel)``
    of each) or over all tensors together (``scope="global"``)."""
    if scope == "tensor":
        return [topk_mask(s, round(fraction * s.numel())) for s in scores]
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    mask = topk_mask(flat, round(fraction * flat.numel()))
    return [m.view(s.shape) for m, s in zip(mask.split([s.numel() for s in scores]), scores)]


def _count(start: int, n: int, stride: int) -> int:
    return max(0, -(-(n - start) // stride))


def magnitude_thresholds(tensors: Sequence[Tensor], fraction: float, scope: str, sample_size: int, *,
                         shards: Sequence[Sequence[tuple[int, int]]] | None = None, rank: int = 0,
                         gather: Callable[[list[Tensor], list[list[int]]], list[Tensor]] | None = None
                         ) -> list[float]:
    """Per tensor, the ``λ`` such that zeroing the entries with ``|x| <= λ`` zeroes (about) the smallest
    ``fraction`` of them: the ``round(fraction * m)``-th smallest ``|x|`` of an evenly strided sample of at most
    ``sample_size`` entries (exact for smaller tensors). ``scope="global"`` draws one ``λ`` from a sample of all
    tensors with one stride. ``-1.0`` where the fraction rounds to no entry. One device sync for all tensors.

    Sharded tensors (each rank holds one flat run of every tensor, see :func:`clight.sharding.row_shards`):
    ``shards[i]`` lists every rank's ``(offset, entries)`` of tensor ``i``, ``tensors`` are this rank's (``rank``)
    runs, and ``gather(pieces, counts)`` returns every rank's samples concatenated per tensor; the thresholds
    are then those of the full tensors, the same on every rank."""
    if not tensors:
        return []
    if shards is None:
        shards, rank = [[(0, t.numel())] for t in tensors], 0
    full = [sum(n for _, n in spans) for spans in shards]
    if scope == "tensor":
        strides = [max(1, -(-n // sample_size)) for n in full]
    else:
        strides = [max(1, -(-sum(full) // sample_size))] * len(tensors)
    pieces = [t.reshape(-1)[(-spans[rank][0]) % s::s] for t, spans, s in zip(tensors, shards, strides)]
    if gather is not None:
        counts = [[_count((-spans[r][0]) % s, spans[r][1], s) for spans, s in zip(shards, strides)]
                  for r in range(len(shards[0]))]
        pieces = gather(pieces, counts)
    if scope == "tensor":
        values = []
        for piece in pieces:
            s = piece.abs().float()
            k = round(fraction * s.numel())
            values.append(s.kthvalue(k).values if k > 0 else s.new_tensor(-1.0))
        return torch.stack(values).tolist()
    s = torch.cat([piece.float() for piece in pieces]).abs()
    k = round(fraction * s.numel())
    value = float(s.kthvalue(k).values) if k > 0 else -1.0
    return [value] * len(tensors)


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor as uint8 bytes, 8 entries per byte, most significant bit first (``numpy.packbits``)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`pack_bits`: the boolean tensor of ``shape``."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1  # (B, 8)
    return bits.reshape(-1)[: math.prod(shape)].view(*shape).bool()


def fold_importance(running: Mapping[str, Tensor], task: Mapping[str, Tensor], fraction: float, scope: str
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Add a finished task's importance to the running importance and mask its top ``fraction``.

    The task's importance is divided by its maximum over all tensors (the max, not the mean: exact whatever the
    reduction order that produced it) and added to ``running``; the sum is kept in bfloat16. Returns the new
    running importance and the boolean masks of its top ``fraction`` (per tensor or over all, ``scope``)."""
    peak = max(float(t.max()) for t in task.values())
    out = dict(running)
    for name, t in task.items():
        t = t / peak if peak > 0 else t
        previous = out.get(name)
        out[name] = (t if previous is None else previous.float() + t).to(torch.bfloat16)
    return out, dict(zip(out, topk_masks(list(out.values()), fraction, scope)))


def sparse_regions(change: Sequence[Tensor], free: Sequence[Tensor], fraction: float, scope: str) -> list[Tensor]:
    """A task's new sparse regions: the ``fraction`` of entries (per tensor, or of all entries with ``scope:
    global``) that changed most, ``|θ_end − θ_start|`` in ``change``, among the ``free`` (not yet masked) ones."""
    change = [c.masked_fill(~f, -1.0) for c, f in zip(change, free)]
    if scope == "tensor":
        regions = [topk_mask(c, min(round(fraction * c.numel()), int(f.sum()))) for c, f in zip(change, free)]
    else:
        flat = torch.cat([c.reshape(-1) for c in change])
        k = min(round(fraction * flat.numel()), int(sum(int(f.sum()) for f in free)))
        regions = [m.view(c.shape) for m, c in zip(topk_mask(flat, k).split([c.numel() for c in change]), change)]
    return [r & f for r, f in zip(regions, free)]
