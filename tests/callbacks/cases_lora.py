"""Contract-harness rows for the LoRA callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import ChainOfLoRA, LoRAPerTask, OrthogonalLoRA

BERT_LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}
LLAMA_LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}

LORA_CASES: list[Case] = [
    Case("lora_per_task", LoRAPerTask, {}, bad_kwargs=[({"seed": -1}, "seed")], module_kwargs=BERT_LORA,
         stream_kwargs={"scenario": "task_incremental"}),
    Case("lora_per_task_causal_lm", LoRAPerTask, {"seed": 3}, bad_kwargs=[({"seed": 1.5}, "seed")],
         kind="causal_lm", module_kwargs=LLAMA_LORA),
    Case("chain_of_lora_periodic", ChainOfLoRA, {"every_n_steps": 2},
         bad_kwargs=[({"every_n_steps": -1}, "every_n_steps"), ({"every_n_steps": 0.5}, "every_n_steps")],
         module_kwargs=BERT_LORA),
    Case("orthogonal_lora", OrthogonalLoRA, {"lambda_orth": 0.5, "lambda_l2": 0.01},
         bad_kwargs=[({"lambda_orth": 0.0}, "lambda_orth"), ({"lambda_l2": -1.0}, "lambda_l2")],
         module_kwargs=BERT_LORA),
]
