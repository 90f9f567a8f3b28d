"""The callback contract table: every continual-learning callback joins it.

Each :class:`Case` names a callback class, constructor kwargs for a short run, the stream kind it runs on, and
bad kwargs that must be rejected in ``__init__`` (with the argument's name in the message). Each technique family
keeps its rows in its own ``cases_<family>.py``; this module concatenates them. The contract tests in
``test_contract.py`` run every case through: constructor validation, ``state_dict`` round-trip through
``torch.save``/``torch.load(weights_only=True)``, crash-and-resume equivalence, and identical state on both ranks
of a 2-process CPU DDP run.
"""

from __future__ import annotations

from case import Case
from cases_distillation import DISTILLATION_CASES
from cases_lora import LORA_CASES
from cases_masking import MASKING_CASES
from cases_regularization import REGULARIZATION_CASES
from cases_rehearsal import REHEARSAL_CASES
from cases_weight_space import WEIGHT_SPACE_CASES
from probe import ProbeCallback

CASES: list[Case] = [
    Case("probe", ProbeCallback, {"scale": 2.0}, bad_kwargs=[({"scale": 0.0}, "scale")]),
]
CASES += (REHEARSAL_CASES + REGULARIZATION_CASES + DISTILLATION_CASES + MASKING_CASES + LORA_CASES
          + WEIGHT_SPACE_CASES)


def case_by_id(case_id: str) -> Case:
    for case in CASES:
        if case.id == case_id:
            return case
    raise KeyError(case_id)
