"""Contract-harness rows for the weight-space callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import EMAWeights, TaskVectorMerge, WeightInterpolation

WEIGHT_SPACE_CASES: list[Case] = [
    Case("ema", EMAWeights, {"decay": 0.5, "warmup": True, "continue_from": "fast"},
         bad_kwargs=[({"decay": 1.0}, "decay"), ({"every_n_steps": 0}, "every_n_steps"),
                     ({"continue_from": "slow"}, "continue_from"), ({"new_class_rows": "zero"}, "new_class_rows")]),
    Case("weight_interpolation", WeightInterpolation, {"alpha": 0.7, "anchor": "pretrained"},
         bad_kwargs=[({"alpha": 1.5}, "alpha"), ({"alpha": "best"}, "alpha"), ({"anchor": "zero"}, "anchor"),
                     ({"alpha_grid": [0.5]}, "alpha_grid")]),
    Case("weight_interpolation_auto", WeightInterpolation,
         {"alpha": "auto", "alpha_grid": [0.0, 0.5, 1.0], "anchor": "previous", "selection_examples": 8},
         bad_kwargs=[({"alpha_grid": [0.5, 2.0]}, "alpha_grid"), ({"selection_examples": 0}, "selection_examples")]),
    Case("task_vector_merge", TaskVectorMerge, {"method": "ties", "density": 0.5, "storage_dtype": "bfloat16"},
         bad_kwargs=[({"method": "average"}, "method"), ({"density": 0.0}, "density"), ({"scale": 0.0}, "scale"),
                     ({"drop_rate": 1.0}, "drop_rate"), ({"top": 0.5, "bottom": 0.6}, "top"),
                     ({"storage_dtype": "int8"}, "storage_dtype")]),
    Case("task_vector_merge_dare", TaskVectorMerge,
         {"method": "dare", "drop_rate": 0.3, "task_vector": "from_task_start", "continue_from": "merged"},
         bad_kwargs=[({"task_vector": "from_zero"}, "task_vector"), ({"continue_from": "both"}, "continue_from")]),
]
