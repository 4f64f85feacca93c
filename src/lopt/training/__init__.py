"""Inner training: the one jitted loop every command runs, and optimizers resolved by name."""

from lopt.training.loop import TrainCurves, seed_keys, stack_variants, train_curves
from lopt.training.optimizers import OptimizerSpec, OptimizerSpecError, resolve

__all__ = [
    "OptimizerSpec",
    "OptimizerSpecError",
    "TrainCurves",
    "resolve",
    "seed_keys",
    "stack_variants",
    "train_curves",
]
