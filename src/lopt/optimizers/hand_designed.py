"""Hand-designed optax optimizers behind the LearnedOptimizer interface.

Meta-training benchmarks and evaluations run Adam in exactly the same vmapped/scanned layout
as the learned optimizers; wrapping the optax transformation (``theta = {}``) makes that a
one-liner instead of a second code path.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import optax

HAND_DESIGNED = ("sgd", "momentum", "adam", "adamw")


def hand_designed(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``sgd``, ``momentum`` (0.9), ``adam`` or ``adamw`` (weight decay 1e-4) from optax."""
    if learning_rate <= 0:
        raise ValueError(f"learning rate must be > 0, got {learning_rate}")
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=1e-4)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(HAND_DESIGNED)}")


@dataclasses.dataclass(frozen=True)
class OptaxOptimizer:
    """Any optax transformation as a :class:`~lopt.optimizers.base.LearnedOptimizer`."""

    tx: optax.GradientTransformation
    name: ClassVar[str] = "optax"

    def init(self, key):
        del key
        return {}

    def init_state(self, theta, params):
        del theta
        return self.tx.init(params)

    def update(self, theta, opt_state, grads, params, *, loss=None):
        del theta
        extra = {} if loss is None else {"loss": loss}
        tx = optax.with_extra_args_support(self.tx)
        updates, new_state = tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), new_state

    def as_optax(self, theta):
        del theta
        return optax.with_extra_args_support(self.tx)
