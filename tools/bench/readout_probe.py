"""Diagnostic callback: is the first task's forgetting in the classification head or in the features?

After every task it evaluates the first task's test set (task-IL: argmax over that task's classes) and writes one
JSON line with
  - ``cur_head``: the current model (what the benchmark reports),
  - ``task0_head``: the current features read by the head rows saved right after the first task,
  - ``old_feats_cur_head``: the features saved after the first task read by the current head,
  - ``ncm_cur_feats``: nearest class mean on the current features (what re-fitting a readout could still get),
  - ``feat_cos``: mean cosine between each example's current and first-task pooled features,
  - ``head_rows_change``: relative change of the first task's head rows.

If ``task0_head`` ≈ ``cur_head`` the head is not what forgot; if ``ncm_cur_feats`` stays high while ``cur_head``
drops, the features still separate the classes but moved away from where the head reads them.

    PYTHONPATH=tools clight fit -c configs/hft.yaml --trainer.callbacks+=readout_probe.ReadoutProbe \\
        --trainer.callbacks.out runs/hft_probe.jsonl --stream.run_dir runs/hft_probe
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class ReadoutProbe(Callback):
    """Writes the first task's readout diagnostics after every task (rank 0, classification streams)."""

    def __init__(self, out: str = "readout_probe.jsonl") -> None:
        self.out = Path(out)
        self.w0 = self.b0 = self.h0 = None
        self.tasks_seen = 0

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        loader = trainer.datamodule.eval_dataloaders()[0]
        classes = torch.tensor(pl_module.task_classes[0])
        feats, labels = [], []
        handle = pl_module.output_head().register_forward_hook(lambda m, args, out: feats.append(args[0].detach().float().cpu()))
        was_training = pl_module.training
        pl_module.eval()
        try:
            for batch in loader:
                batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pl_module(batch)
                labels.append(batch["labels"].cpu())
        finally:
            handle.remove()
            pl_module.train(was_training)
        h, y = torch.cat(feats), torch.cat(labels)
        head = pl_module.output_head()
        w, b = head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
        if self.w0 is None:
            self.w0, self.b0, self.h0 = w.clone(), b.clone(), h.clone()

        def accuracy(feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
            logits = feat @ weight[classes].T + bias[classes]
            return float((classes[logits.argmax(-1)] == y).float().mean())

        means = torch.stack([h[y == c].mean(0) for c in classes.tolist()])
        row = {
            "after_task": self.tasks_seen,
            "cur_head": accuracy(h, w, b),
            "task0_head": accuracy(h, self.w0, self.b0),
            "old_feats_cur_head": accuracy(self.h0, w, b),
            "ncm_cur_feats": float((classes[torch.cdist(h, means).argmin(-1)] == y).float().mean()),
            "feat_cos": float(torch.nn.functional.cosine_similarity(h, self.h0).mean()),
            "head_rows_change": float((w[classes] - self.w0[classes]).norm() / self.w0[classes].norm()),
        }
        self.tasks_seen += 1
        if trainer.is_global_zero:
            with self.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print("readout_probe", json.dumps(row), flush=True)
