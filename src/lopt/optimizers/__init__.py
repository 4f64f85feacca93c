"""Learned optimizers (Blackbox, STAR), the shared feature recipe, and optax front-ends."""

from lopt.optimizers.base import LearnedOptimizer
from lopt.optimizers.blackbox import Blackbox
from lopt.optimizers.features import AccumulatorConfig, bounded_decay
from lopt.optimizers.hand_designed import HAND_DESIGNED, OptaxOptimizer, hand_designed
from lopt.optimizers.io import MetaParamsError, load_meta_params, save_meta_params
from lopt.optimizers.learned import LearnedOptState, num_meta_params
from lopt.optimizers.star import NOMINALS, STAR

__all__ = [
    "HAND_DESIGNED",
    "NOMINALS",
    "STAR",
    "AccumulatorConfig",
    "Blackbox",
    "LearnedOptState",
    "LearnedOptimizer",
    "MetaParamsError",
    "OptaxOptimizer",
    "bounded_decay",
    "hand_designed",
    "load_meta_params",
    "num_meta_params",
    "save_meta_params",
]
