"""Contract-harness rows for the regularization callbacks (distillation and the quadratic-penalty family)."""

from __future__ import annotations

from case import Case

from clight.callbacks import EWC, MAS, SI, Distillation, FeatureDistillation, L2Anchor

_PENALTY_BAD = [({"strength": 0.0}, "strength"), ({"strength": -1.0}, "strength"), ({"dtype": "half"}, "dtype")]

REGULARIZATION_CASES: list[Case] = [
    Case("distillation", Distillation, {"alpha": 1.0, "temperature": 2.0},
         bad_kwargs=[({"alpha": 0.0}, "alpha"), ({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"),
                     ({"teacher_device": "gpu"}, "teacher_device")]),
    Case("distillation_causal_lm", Distillation, {"alpha": 0.5, "top_k": 8, "teacher_device": "cpu"},
         bad_kwargs=[({"top_k": 1.5}, "top_k")], kind="causal_lm"),
    Case("feature_distillation", FeatureDistillation, {"layers": [0, -1], "weights": [0.5, 1.0], "loss": "cosine"},
         bad_kwargs=[({"layers": []}, "layers"), ({"layers": [1, 1]}, "layers"), ({"weights": [1.0]}, "weights"),
                     ({"loss": "l1"}, "loss"), ({"alpha": -1.0}, "alpha")]),
    Case("ewc", EWC, {"strength": 100.0, "num_examples": 12, "estimate_batch_size": 1},
         bad_kwargs=[*_PENALTY_BAD, ({"fisher": "exact"}, "fisher"), ({"num_examples": 0}, "num_examples"),
                     ({"estimate_batch_size": 0}, "estimate_batch_size"), ({"gamma": 0.5}, "gamma")]),
    Case("online_ewc_true_fisher_causal_lm", EWC,
         {"strength": 100.0, "online": True, "gamma": 0.9, "fisher": "true", "num_examples": 6,
          "estimate_batch_size": 2}, bad_kwargs=[({"gamma": 1.5}, "gamma"), ({"gamma": 0.0}, "gamma")],
         kind="causal_lm"),
    Case("mas", MAS, {"strength": 100.0, "num_examples": 10, "estimate_batch_size": 3},
         bad_kwargs=[*_PENALTY_BAD, ({"num_examples": -1}, "num_examples")]),
    Case("si", SI, {"strength": 100.0, "damping": 0.01},
         bad_kwargs=[*_PENALTY_BAD, ({"damping": 0.0}, "damping")]),
    Case("l2_anchor", L2Anchor, {"strength": 10.0, "anchor": "task_start"},
         bad_kwargs=[*_PENALTY_BAD, ({"anchor": "zero"}, "anchor")]),
    Case("l2_sp_lora", L2Anchor, {"strength": 10.0, "anchor": "pretrained"},
         module_kwargs={"peft": {"r": 4, "target_modules": ["query", "value"]}}),
]
