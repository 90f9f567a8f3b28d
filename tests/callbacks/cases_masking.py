"""Contract-harness rows for the masking callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import FreezeParameters, GradientMask, HalfFineTuning

MASKING_CASES: list[Case] = [
    Case("freeze_bitfit", FreezeParameters, {"preset": "bitfit"},
         bad_kwargs=[({"preset": "lora"}, "preset"), ({"freeze": ["re:("]}, "freeze"),
                     ({"preset": "lower_layers"}, "num_layers"), ({"num_layers": 0}, "num_layers"),
                     ({"preset": None, "freeze": None}, "nothing to freeze")]),
    Case("freeze_schedule", FreezeParameters,
         {"freeze": ["embeddings"], "schedule": {1: {"freeze": ["embeddings", "layers:0"], "train_only": ["*.bias"]}}},
         bad_kwargs=[({"schedule": {-1: {}}}, "schedule"), ({"schedule": {1: {"frozen": ["x"]}}}, "schedule"),
                     ({"freeze": ["layers:3-1"]}, "freeze"), ({"train_only": "*.bias"}, "train_only")]),
    Case("hft", HalfFineTuning, {},
         bad_kwargs=[({"seed": -1}, "seed"), ({"train_embeddings": "yes"}, "train_embeddings")]),
    Case("gmask_magnitude", GradientMask, {"mode": "magnitude", "fraction": 0.3},
         bad_kwargs=[({"mode": "random"}, "mode"), ({"fraction": 0.0}, "fraction"), ({"fraction": 1.0}, "fraction"),
                     ({"scope": "layer"}, "scope"), ({"sample_size": 1}, "sample_size"), ({"reset": True}, "reset")]),
    Case("gmask_importance", GradientMask, {"mode": "importance", "fraction": 0.2, "importance": "path"},
         bad_kwargs=[({"importance": "hessian"}, "importance"), ({"include_head": 1}, "include_head")]),
    Case("gmask_sparse", GradientMask, {"mode": "sparse", "fraction": 0.05, "reset": True, "scope": "global"},
         bad_kwargs=[({"fraction": 2}, "fraction")]),
]
