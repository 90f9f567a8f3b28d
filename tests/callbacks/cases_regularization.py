"""Contract-harness rows for the regularization callbacks (the quadratic-penalty family)."""

from __future__ import annotations

from case import Case

from clight.callbacks import EWC, MAS, SI, L2Anchor

_PENALTY_BAD = [({"strength": 0.0}, "strength"), ({"strength": -1.0}, "strength"), ({"dtype": "half"}, "dtype")]

REGULARIZATION_CASES: list[Case] = [
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
