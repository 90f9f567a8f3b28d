"""A Hugging Face model class for clight's classification exports: ``linear(mean of the encoder's token states over
the non-padding positions)``, as clight trains it. This file is copied into every classification export, and
``transformers`` loads it from there (``trust_remote_code=True``); it needs ``transformers`` and ``torch`` only::

    from transformers import pipeline
    classify = pipeline("text-classification", model="out/classifier", trust_remote_code=True)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class ClightMeanPoolClassifier(PreTrainedModel):
    """An encoder (any ``AutoModel`` of the config's ``model_type``) and one linear layer over its mean-pooled
    token states; ``config.id2label`` names the classes."""

    config_class = PretrainedConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        if isinstance(getattr(self.encoder, "pooler", None), nn.Module):
            self.encoder.pooler = None  # clight classifies from mean-pooled states; the [CLS] pooler is unused
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # every weight comes from the export
        pass

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        logits = self.classifier((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))  # (B, C)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
