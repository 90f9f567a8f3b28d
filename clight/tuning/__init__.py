"""Hyperparameter tuning on validation data (``clight tune``): search spaces, objectives, and an Optuna study whose
trials are ordinary ``clight fit`` runs."""

from clight.tuning.objective import OBJECTIVES, objective_value, validation_summary
from clight.tuning.space import Dimension, apply, load_space
from clight.tuning.study import run_study, trial_key

__all__ = ["OBJECTIVES", "Dimension", "apply", "load_space", "objective_value", "run_study", "trial_key",
           "validation_summary"]
