"""Hand-designed optax optimizers behind the LearnedOptimizer interface.

Meta-training benchmarks and evaluations run Adam in exactly the same vmapped/scanned layout
as the learned optimizers; wrapping the optax transformation (``theta = {}``) makes that a
one-liner instead of a second code path. :func:`hand_designed_tx` builds the same optimizers
from a (possibly traced) learning rate, so a learning-rate grid is one vmapped program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import optax

#: name -> optax constructor taking the learning rate (which may be a traced array).
_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
    # Parameter-free Adam (Mishchenko & Defazio 2023): it estimates its own step size, and
    # the "learning rate" is a multiplier of that estimate (1.0 is the method as published).
    # Here as the reference a learned optimizer's "no learning rate to tune" should be held
    # against, next to tuned Adam.
    "prodigy": lambda lr: optax.contrib.prodigy(lr),
}
HAND_DESIGNED = tuple(_BUILDERS)
#: the optimizers whose learning rate is a step size, so a grid of rates can tune them (an
#: evaluation's baseline); Prodigy's is a multiplier of its own estimate and is not tuned.
LEARNING_RATE_TUNED = ("sgd", "momentum", "adam", "adamw")


def hand_designed(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``sgd``, ``momentum`` (0.9), ``adam``, ``adamw`` (weight decay 1e-4) or ``prodigy``
    (parameter-free; ``learning_rate`` multiplies its own step-size estimate) from optax."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(HAND_DESIGNED)}")
    if learning_rate <= 0:
        raise ValueError(f"learning rate must be > 0, got {learning_rate}")
    return _BUILDERS[name](learning_rate)


def hand_designed_tx(name: str) -> Callable[[dict], optax.GradientTransformation]:
    """``make_tx(theta)`` with ``theta = {"learning_rate": lr}``; ``lr`` may be traced, so a
    learning-rate grid runs as one vmapped program (:mod:`lopt.training.loop`)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(HAND_DESIGNED)}")
    build = _BUILDERS[name]
    return lambda theta: build(theta["learning_rate"])


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
