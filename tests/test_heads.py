"""Task heads: their evaluation metrics (torchmetrics, synced across processes), losses and label sampling."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from clight_testing import tiny_module

from clight.heads import CausalLMHead, ClassificationHead
from clight.losses import causal_lm_nll


def _classification_head(num_classes: int = 4) -> ClassificationHead:
    backbone = torch.nn.Module()
    backbone.config = type("Config", (), {"hidden_size": 2})()
    head = ClassificationHead()
    head.configure(backbone, num_classes=num_classes, task_classes=[[0, 1], [2, 3]])
    return head


def test_classification_metrics_count_valid_rows_only_and_restrict_task_il_to_the_task() -> None:
    head = _classification_head()
    metrics = head.new_metrics(1)
    logits = torch.tensor([[9.0, 0.0, 1.0, 0.0],   # class-IL says 0 (wrong), task-IL (classes 2, 3) says 2
                           [0.0, 0.0, 0.0, 5.0],   # 3: right under both
                           [0.0, 0.0, 7.0, 0.0]])  # padding repeat: must not count
    batch = {"labels": torch.tensor([2, 3, 0])}
    head.update_metrics(metrics, batch, {"logits": logits}, torch.tensor([True, True, False]), 1)
    head.update_metrics(metrics, batch, {"logits": logits}, torch.zeros(3, dtype=torch.bool), 1)  # all padding
    values = head.compute_metrics(metrics)
    assert values == {"class_il_acc": 0.5, "task_il_acc": 1.0, "count": 2.0}


def test_causal_lm_metrics_are_the_token_weighted_nll_and_its_exp() -> None:
    head = CausalLMHead()
    metrics = head.new_metrics(0)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    head.update_metrics(metrics, {"labels": labels}, {"logits": logits}, torch.tensor([True, True]), 0)
    values = head.compute_metrics(metrics)
    flat = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert values["nll"] == pytest.approx(float(flat), rel=1e-6)
    assert values["ppl"] == pytest.approx(math.exp(float(flat)), rel=1e-6) and values["count"] == 6.0


def test_the_module_takes_loss_and_metrics_from_its_head() -> None:
    module = tiny_module(num_classes=3)
    module.configure_stream(num_classes=3)
    assert isinstance(module.head, ClassificationHead) and module.output_head() is module.head.linear
    assert module.metric_names == ("class_il_acc", "task_il_acc")
    assert module.higher_is_better == {"class_il_acc": True, "task_il_acc": True}
    lm = tiny_module("causal_lm")
    lm.configure_stream(vocab_size=64)
    assert lm.output_head() is None and lm.higher_is_better == {"ppl": False}
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[1, 2, 3, 4]])}
    out = lm(batch)
    assert torch.allclose(lm.per_example_loss(batch, out), causal_lm_nll(out["logits"], batch["labels"]).mean(1))


def _ddp_worker(rank: int, world: int, workdir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        head = _classification_head()
        metrics = head.new_metrics(0)
        if rank == 0:  # rank 0: 2 right of 3; rank 1: 0 right of 1 (and a padding row)
            logits, labels, valid = torch.eye(4)[[0, 1, 3]] * 5, torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool)
        else:
            logits, labels, valid = torch.eye(4)[[2, 0]] * 5, torch.tensor([3, 0]), torch.tensor([True, False])
        head.update_metrics(metrics, {"labels": labels}, {"logits": logits}, valid, 0)
        with open(f"{workdir}/rank{rank}.json", "w") as fh:
            json.dump(head.compute_metrics(metrics), fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_metrics_are_synced_across_two_gloo_processes(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    assert results[0]["count"] == 4.0 and results[0]["class_il_acc"] == 0.5  # (2 + 0) / 4 valid rows
