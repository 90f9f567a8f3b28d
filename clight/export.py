"""Export a trained :class:`~clight.module.ContinualModule` in Hugging Face format (``save_pretrained``,
safetensors), loadable with plain ``transformers`` / ``peft``; and rebuild the module of a finished run.

Layout of an export folder::

    model/              transformers folder (config, model.safetensors, tokenizer): the merged model, or the
                        base the adapters apply to (the base as trained: ChainOfLoRA's merges are in it)
    adapters/           without --merge, peft runs only: ``save_pretrained`` of the adapters (peft's layout:
                        ``default`` at the top, any other adapter in ``adapters/<name>/``)
    head.safetensors    classification only: the linear head (``weight`` (C, H), ``bias`` (C,))
    classifier/         classification, unless adapters are kept apart: one ``transformers`` folder (encoder and
                        head, ``id2label``) that ``pipeline("text-classification", model="out/classifier",
                        trust_remote_code=True)`` loads, the model class copied in (clight is not needed)
    export.json         what was written: adapters and their folders, the pooling, class names, task classes

Classification logits are ``head(mean over non-padding tokens of last_hidden_state)``, not an HF
``*ForSequenceClassification`` head (those pool differently, so they would not give the same logits)::

    from transformers import AutoModel, AutoTokenizer
    from safetensors.torch import load_file
    enc = AutoModel.from_pretrained("out/model", add_pooling_layer=False)   # BERT-style: the pooler is unused
    # peft export: enc = peft.PeftModel.from_pretrained(enc, "out/adapters")  (or "out/adapters/task_2")
    head = load_file("out/head.safetensors")
    hidden = enc(**batch).last_hidden_state                                   # (B, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    logits = ((hidden * mask).sum(1) / mask.sum(1)) @ head["weight"].T + head["bias"]
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clight.errors import ClightConfigError
from clight.module import ContinualModule
from clight.runs import load_run

EXPORT_FORMAT = "clight-export-1"


def export_module(
    module: ContinualModule,
    out_dir: str | Path,
    *,
    merge: bool = False,
    adapters: Sequence[str] | None = None,
    tokenizer: Any = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``module`` to ``out_dir`` in Hugging Face format and return the manifest (``export.json``).

    Args:
        module: a configured module (``configure_stream`` done, weights loaded).
        out_dir: the export folder (created; existing files of the same names are overwritten).
        merge: peft modules: merge the adapters into the weights and write a plain ``transformers`` model;
            otherwise write the base and the adapters separately. Ignored without peft.
        adapters: peft modules: the adapters to export (merged: the adapters to merge, default the active ones;
            unmerged: default all).
        tokenizer: saved beside the model when given.
        class_names: class names of the head's rows (written to ``export.json``).
    """
    from safetensors.torch import save_file

    if module.backbone is None:
        raise ClightConfigError("export: the module has no backbone yet; call `configure_stream` first.")
    out = Path(out_dir)
    (out / "model").mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": EXPORT_FORMAT, "task": module.task, "model": "model", "merged": False,
                                "adapters": {}, "active_adapters": []}
    peft_model = module.peft_model
    backbone = getattr(module.backbone, "_orig_mod", module.backbone)
    if peft_model is None:
        backbone.save_pretrained(out / "model", safe_serialization=True)
    else:
        names = list(adapters) if adapters is not None else None
        unknown = sorted(set(names or []) - set(module.adapter_names))
        if unknown:
            raise ClightConfigError(f"export `--adapter`: {unknown} not in the run's adapters {module.adapter_names}.")
        peft_copy = copy.deepcopy(peft_model).cpu()
        if merge:
            names = names or module.active_adapters
            left = [n for n in module.adapter_names if n not in names]
            if adapters is None and left:
                raise ClightConfigError(
                    f"export `--merge`: the run has adapters {module.adapter_names} of which {module.active_adapters} "
                    f"are active (one per task, e.g. LoRAPerTask); merging would drop {left}. Pass `--adapter NAME` "
                    "for one merged model per task, or export without `--merge` to keep every adapter."
                )
            plain = peft_copy.merge_and_unload(adapter_names=names)
            manifest.update(merged=True, merged_adapters=names)
        else:
            names = names or module.adapter_names
            peft_copy.save_pretrained(out / "adapters", selected_adapters=names, safe_serialization=True)
            manifest["adapters"] = {n: "adapters" if n == "default" else f"adapters/{n}" for n in names}
            manifest["active_adapters"] = [n for n in module.active_adapters if n in names]
            plain = peft_copy.unload()
        plain.save_pretrained(out / "model", safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "model")
    head = module.output_head()
    if isinstance(head, torch.nn.Linear) and (peft_model is None or merge):
        encoder = backbone if peft_model is None else plain
        write_classifier(out / "classifier", encoder, head, class_names, tokenizer)
        manifest["classifier"] = "classifier"
    if isinstance(head, torch.nn.Linear):
        tensors = {"weight": head.weight.detach().cpu().contiguous()}
        if head.bias is not None:
            tensors["bias"] = head.bias.detach().cpu().contiguous()
        save_file(tensors, str(out / "head.safetensors"))
        manifest.update(
            head="head.safetensors", pooling="mean", hidden_size=head.in_features, num_classes=head.out_features,
            classes=list(class_names) if class_names is not None else None, task_classes=module.task_classes,
        )
    (out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_run(run_dir: str | Path, out_dir: str | Path, *, merge: bool = False,
               adapters: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`load_run` then :func:`export_module` (with the stream's tokenizer and class names)."""
    module, datamodule, saved = load_run(run_dir)
    manifest = export_module(module, out_dir, merge=merge, adapters=adapters,
                             tokenizer=getattr(datamodule, "tokenizer", None),
                             class_names=getattr(datamodule, "classes", None))
    stages = list(getattr(datamodule, "stage_names", []))
    manifest.update(run_dir=str(run_dir), completed_stages=stages[: int(saved["state"]["completed"])], stages=stages)
    (Path(out_dir) / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_classifier(folder: Path, encoder: torch.nn.Module, head: torch.nn.Linear,
                     class_names: Sequence[str] | None, tokenizer: Any) -> None:
    """A self-contained ``transformers`` folder of the classifier, with ``id2label``, that
    ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")`` load with
    ``trust_remote_code=True`` (the model class, :mod:`clight.hf.modeling_clight`, is copied in; clight itself is not
    needed to load it)."""
    import shutil

    from safetensors.torch import save_file

    from clight.hf import modeling_clight

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(encoder.config)
    names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(head.out_features)]
    config.num_labels = head.out_features
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.architectures = ["ClightMeanPoolClassifier"]
    config.auto_map = {"AutoModelForSequenceClassification": "modeling_clight.ClightMeanPoolClassifier"}
    config.save_pretrained(folder)
    state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    state.update({"classifier.weight": head.weight.detach().cpu().contiguous()})
    if head.bias is not None:
        state["classifier.bias"] = head.bias.detach().cpu().contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(modeling_clight.__file__, folder / "modeling_clight.py")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
