"""Contract-harness rows for the LoRA callbacks."""

from __future__ import annotations

from case import Case

from clight.callbacks import AdaLoRABudget, ChainOfLoRA, LoRAPerTask, OrthogonalLoRA

BERT_LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}}
LLAMA_LORA = {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
# AdaLoRA's schedule over one task of the harness (6 steps): warm-up 1, ranks masked in steps 2-4, fixed after
LLAMA_ADALORA = {"peft": {"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "deltaT": 1,
                          "total_step": 6, "target_modules": ["q_proj", "v_proj"]}}

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
    Case("adalora_budget", AdaLoRABudget, {}, bad_kwargs=[({"orth_reg_weight": -1.0}, "orth_reg_weight")],
         kind="causal_lm", module_kwargs=LLAMA_ADALORA),
]
