"""Prodigy's running estimate of the distance to the solution, as an input to the learned MLP.

Prodigy (Mishchenko & Defazio 2023, ``optax.contrib.prodigy``) keeps one global number ``d``,
a lower bound on ``|x0 - x*|`` built from how far the gradients have pushed the parameters from
their start, and steps ``d``-sized Adam steps. The estimate needs no learning rate and no
horizon, which is why it is a useful input for a horizon-free learned optimizer: the MLP reads
``log(d / unit) / 5`` (``unit``: the optimizer's nominal step) next to the time features and
can learn when a larger step pays, across tasks whose good learning rates differ by 100x.

Measured (issue 9): used as the step size itself (``d / alpha`` multiplying the update) the
estimate, which only ever grows, blew up converged runs (``digits_mlp`` loss 4e-4 -> 1.1 as
``d`` rose 0.06 -> 0.28); read by the MLP instead, the meta-trained optimizer learned when to
trust it. So it is an input here, never a multiplier.

Numbers, per step ``t = 1, 2, ...`` with Prodigy's betas (0.9, 0.999), ``beta3 = sqrt(0.999)``,
``w = d^2 sqrt(1 - 0.999^t) / (1 - 0.9^t)``::

    num <- beta3 num + w <g, x0 - x>
    s   <- beta3 s + w g                       (per coordinate)
    d   <- max(d, num / sum |s|)               (unchanged while sum |s| = 0)

optax scales both ``num`` and ``s`` by ``1 / d0`` (a common factor: the same ``d``); ``x`` is
the parameters the gradient was taken at, ``x0`` those at ``init``. Costs two float32 copies of
the parameters in the state and one extra pass over them per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

#: Prodigy's initial estimate (its published default).
D0 = 1e-6
BETA1, BETA2 = 0.9, 0.999
BETA3 = BETA2**0.5
#: The MLP input is ``log(d / unit) / FEATURE_SCALE``: within +-1.4 for d / unit in [1e-3, 1e3].
FEATURE_SCALE = 5.0


class DistanceState(NamedTuple):
    """``d``: the estimate; ``numerator``: the weighted sum of ``<g, x0 - x>``; ``grad_sum``:
    the weighted sum of gradients (per tensor, float32); ``params0``: the parameters at init."""

    d: jax.Array
    numerator: jax.Array
    grad_sum: Any
    params0: Any


def init_distance(params) -> DistanceState:
    """``params0`` is a copy, never the caller's own buffer: a training step that donates both
    the parameters and the optimizer state (``donate_argnums``) would otherwise hand XLA the
    same buffer twice."""
    return DistanceState(
        d=jnp.asarray(D0, jnp.float32),
        numerator=jnp.zeros((), jnp.float32),
        grad_sum=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
        params0=jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params),
    )


def update_distance(state: DistanceState, step, grads, params) -> DistanceState:
    """The estimate after the gradients ``grads`` taken at ``params`` (step ``step``: the
    number of updates done before this one, as in the optimizer's counter)."""
    t = (jnp.asarray(step) + 1).astype(jnp.float32)
    bias_correction = jnp.sqrt(1 - BETA2**t) / (1 - BETA1**t)
    weight = state.d * state.d * bias_correction
    treedef = jax.tree.structure(state.params0)
    g32 = [jnp.asarray(g, jnp.float32) for g in treedef.flatten_up_to(grads)]
    p32 = [jnp.asarray(p, jnp.float32) for p in treedef.flatten_up_to(params)]
    x0 = treedef.flatten_up_to(state.params0)
    moved = sum(jnp.vdot(g, a - p) for g, a, p in zip(g32, x0, p32, strict=True))
    numerator = BETA3 * state.numerator + weight * moved
    grad_sum = [
        BETA3 * s + weight * g
        for s, g in zip(treedef.flatten_up_to(state.grad_sum), g32, strict=True)
    ]
    denominator = sum(jnp.sum(jnp.abs(s)) for s in grad_sum)
    ratio = jnp.where(denominator > 0, numerator / jnp.maximum(denominator, 1e-38), 0.0)
    return DistanceState(
        d=jnp.maximum(state.d, ratio),
        numerator=numerator,
        grad_sum=jax.tree.unflatten(treedef, grad_sum),
        params0=state.params0,
    )


def distance_feature(d, unit: float) -> jax.Array:
    """The MLP input: ``log(d / unit) / 5``, shape ``(1,)``."""
    return (jnp.log(d / unit) / FEATURE_SCALE)[None]
