"""Contract-harness rows for the rehearsal callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import AGEM, DarkExperienceReplay, Replay, SelectiveSelfRehearsal

REHEARSAL_CASES: list[Case] = [
    Case("replay_per_batch", Replay, {"memory_size": 16, "replay_batch_size": 4},
         bad_kwargs=[({"memory_size": 0}, "memory_size"), ({"replay_batch_size": 0}, "replay_batch_size"),
                     ({"policy": "fifo"}, "policy"), ({"selection": "newest"}, "selection"),
                     ({"seed": -1}, "seed"), ({"score_pool": 0}, "score_pool"), ({"weight": 0.0}, "weight")]),
    Case("replay_mixed", Replay, {"memory_size": 16, "mode": "mixed", "mixed_ratio": 0.5, "policy": "class_balanced"},
         bad_kwargs=[({"mode": "interleaved"}, "mode"), ({"mixed_ratio": 0.0}, "mixed_ratio")]),
    Case("replay_memmap", Replay, {"memory_size": 16, "replay_batch_size": 4, "memmap_dir": "memory"}),
    Case("replay_causal_lm", Replay, {"memory_size": 16, "replay_batch_size": 4, "policy": "task_balanced"},
         bad_kwargs=[({"memory_size": -5}, "memory_size")], kind="causal_lm"),
    Case("der", DarkExperienceReplay, {"memory_size": 16, "replay_batch_size": 4, "selection": "highest_loss"},
         bad_kwargs=[({"alpha": 0.0}, "alpha"), ({"beta": -1.0}, "beta"), ({"top_k": 0}, "top_k"),
                     ({"memory_size": 0}, "memory_size")]),
    Case("der_causal_lm", DarkExperienceReplay, {"memory_size": 16, "replay_batch_size": 4, "top_k": 4},
         bad_kwargs=[({"top_k": 1.5}, "top_k")], kind="causal_lm"),
    Case("agem", AGEM, {"memory_size": 16, "replay_batch_size": 4, "policy": "task_balanced"},
         bad_kwargs=[({"memory_size": 0}, "memory_size"), ({"replay_batch_size": -1}, "replay_batch_size"),
                     ({"policy": "balanced"}, "policy")]),
    Case("self_rehearsal", SelectiveSelfRehearsal, {"judge": "rouge_l", "threshold": 0.2, "synthetic_per_task": 2},
         bad_kwargs=[({"judge": "bleu"}, "judge"), ({"threshold": 1.5}, "threshold"),
                     ({"synthetic_per_task": -1}, "synthetic_per_task"), ({"seed": -2}, "seed")], kind="instruction"),
    Case("self_rehearsal_llm_judge", SelectiveSelfRehearsal, {"judge": "llm", "threshold": 0.5}, kind="instruction"),
]
