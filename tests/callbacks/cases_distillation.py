"""Contract-harness rows for the distillation callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import Distillation, FeatureDistillation

DISTILLATION_CASES: list[Case] = [
    Case("distillation", Distillation, {"alpha": 1.0, "temperature": 2.0},
         bad_kwargs=[({"alpha": 0.0}, "alpha"), ({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"),
                     ({"teacher_device": "gpu"}, "teacher_device")]),
    Case("distillation_causal_lm", Distillation, {"alpha": 0.5, "top_k": 8, "teacher_device": "cpu"},
         bad_kwargs=[({"top_k": 1.5}, "top_k")], kind="causal_lm"),
    Case("feature_distillation", FeatureDistillation, {"layers": [0, -1], "weights": [0.5, 1.0], "loss": "cosine"},
         bad_kwargs=[({"layers": []}, "layers"), ({"layers": [1, 1]}, "layers"), ({"weights": [1.0]}, "weights"),
                     ({"loss": "l1"}, "loss"), ({"alpha": -1.0}, "alpha")]),
]
