"""What the runner sets up for a stream before its first task: the module sized for the stream, and the metrics
of the result matrices (the stream's tasks and its probes)."""

from __future__ import annotations

import lightning.pytorch as pl

from clight.datamodules.base import ContinualDataModule
from clight.errors import ClightConfigError


def stream_metrics(module: pl.LightningModule, datamodule: ContinualDataModule) -> dict[str, bool]:
    """The metrics of the result matrices (whether higher is better for each): the module's evaluation metrics
    of the stream's kind of task, the datamodule's headline metric first."""
    from clight.heads import METRICS_BY_KIND

    metrics = dict(module.higher_is_better)
    if datamodule.eval_kind in METRICS_BY_KIND:  # a causal LM: what this kind of task reports
        metrics = {m: metrics[m] for m in METRICS_BY_KIND[datamodule.eval_kind] if m in metrics}
    primary = datamodule.primary_metric
    if primary is not None:
        if primary not in metrics:
            raise ClightConfigError(
                f"the stream's headline metric {primary!r} is not one the model reports ({sorted(metrics)}); use a "
                "stream and model `task` that fit together."
            )
        metrics = {primary: metrics[primary], **metrics}
    return metrics


def probe_metrics(module: pl.LightningModule, datamodule: ContinualDataModule) -> dict[str, bool]:
    """The metrics of the probe matrices: every metric of the probes' kinds, in the order the kinds list them."""
    from clight.heads import METRICS_BY_KIND

    names = [m for p in datamodule.probes for m in METRICS_BY_KIND[str(p.kind)]]
    higher = module.higher_is_better
    missing = sorted({m for m in names if m not in higher})
    if missing:
        raise ClightConfigError(
            f"`probes`: the model reports none of {missing}; probes need `model.task: instruction`.")
    return {m: higher[m] for m in dict.fromkeys(names)}


def check_positions(module: pl.LightningModule, datamodule: ContinualDataModule) -> None:
    """Refuse a ``max_length`` longer than the positions the model has (it would fail at the first long batch)."""
    limit = getattr(module, "position_limit", None)
    max_length = getattr(datamodule, "max_length", None)
    if limit is not None and isinstance(max_length, int) and max_length > limit[0]:
        positions, key = limit
        raise ClightConfigError(
            f"`data.max_length` is {max_length}, but the model has {positions} positions (`{key}` of its config), so "
            f"longer inputs would index past its position embeddings. Lower `data.max_length` to {positions} or less."
        )


def prepare_stream(module: pl.LightningModule, datamodule: ContinualDataModule) -> None:
    """Read and tokenize the stream and size the module for it (what the runner does before the first task),
    refusing inputs that do not fit the model (positions, tokenizer) in one line."""
    check_positions(module, datamodule)
    if datamodule.tokenizer_path is None and getattr(module, "model_path", None) is not None:
        datamodule.tokenizer_path = str(module.model_path)
        datamodule.tokenizer_from_model = True
    datamodule.prepare_stream()
    if hasattr(module, "configure_stream"):
        tokenizer = datamodule.tokenizer
        module.configure_stream(
            num_classes=getattr(datamodule, "num_classes", None),
            task_classes=getattr(datamodule, "task_classes", None),
            vocab_size=len(tokenizer) if tokenizer is not None else None,
            eval_kinds=datamodule.eval_kinds, tokenizer=tokenizer,
        )
