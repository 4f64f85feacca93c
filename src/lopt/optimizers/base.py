"""The contract every optimizer in lopt honours, learned or hand-designed.

One pure ``update`` serves three users: meta-training (unrolled under ``scan``/``vmap``), the
optax adapter used in ordinary training loops, and the linearization in ``lopt.analysis``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import optax

Params = Any
MetaParams = Any
OptState = Any


@runtime_checkable
class LearnedOptimizer(Protocol):
    """``theta`` are the meta-parameters; everything else is a pure function of them."""

    name: str

    def init(self, key: jax.Array) -> MetaParams:
        """Meta-initialization ``theta``."""

    def init_state(self, theta: MetaParams, params: Params) -> OptState:
        """Optimizer state for ``params`` (accumulators at zero, step 0)."""

    def update(
        self,
        theta: MetaParams,
        opt_state: OptState,
        grads: Params,
        params: Params,
        *,
        loss: jax.Array | None = None,
    ) -> tuple[Params, OptState]:
        """One step: returns ``(new_params, new_opt_state)``."""

    def as_optax(self, theta: MetaParams) -> optax.GradientTransformationExtraArgs:
        """This optimizer with fixed ``theta`` as an optax transformation."""
