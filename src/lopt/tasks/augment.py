"""Task augmentation: the same problem under a random per-tensor reparameterization.

Why: an optimizer meta-trained on a few MLP shapes learns the step sizes *those* tasks want;
on a wider, deeper or differently scaled problem it then steps too far or too little (the
shipped STAR stalls at a noise floor on the ood suite's wide/deep MLPs and autoencoder). Training
the same network in coordinates ``q = p / s`` with a random scale ``s`` per tensor changes the
step size each tensor needs by ``1 / s`` without changing the problem, so the learned step size
has to read what a tensor needs from its features rather than memorize it. Celo's authors
report such rescaling as one of two sources of its generalization.

``RescaledFamily(base, max_scale, identity_fraction)`` draws ``log s`` uniformly in
``[-ln max_scale, ln max_scale]`` per parameter tensor (a traced configuration: one same-shape
family still vmaps) -- or ``s = 1`` for a draw with probability ``identity_fraction``, so that
the unaugmented problems stay in the mix -- and returns the base task with ``init = p0 / s``
and ``loss(q) = loss_base(q * s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from lopt.tasks.base import Task, TaskFamily


def _scaled(tree, scales):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [x * s for x, s in zip(leaves, scales, strict=True)])


@dataclass(frozen=True, eq=False)
class RescaledFamily:
    """``base`` trained in coordinates ``q = p / s``, ``s`` log-uniform per tensor."""

    base: TaskFamily
    max_scale: float = 10.0
    identity_fraction: float = 0.0
    num_tensors: int = field(init=False)

    def __post_init__(self):
        if not self.max_scale >= 1.0:
            raise ValueError(f"max_scale must be >= 1, got {self.max_scale}")
        if not 0.0 <= self.identity_fraction <= 1.0:
            raise ValueError(f"identity_fraction must be in [0, 1], got {self.identity_fraction}")
        key = jax.random.PRNGKey(0)
        shapes = jax.eval_shape(lambda k: self.base.task(self.base.sample(k)).init(k), key)
        object.__setattr__(self, "num_tensors", len(jax.tree.leaves(shapes)))

    @property
    def name(self) -> str:
        return f"{self.base.name}_rescaled"

    def sample(self, key: jax.Array):
        # (two keys without the identity draw: the draws of the study runs stay reproducible)
        keys = jax.random.split(key, 3 if self.identity_fraction > 0 else 2)
        r = math.log(self.max_scale)
        log_scale = jax.random.uniform(keys[1], (self.num_tensors,), jnp.float32, -r, r)
        if self.identity_fraction > 0:
            identity = jax.random.uniform(keys[2]) < self.identity_fraction
            log_scale = jnp.where(identity, 0.0, log_scale)
        return {"base": self.base.sample(keys[0]), "log_scale": log_scale}

    def task(self, cfg) -> Task:
        t = self.base.task(cfg["base"])
        s = jnp.exp(cfg["log_scale"])
        scales = [s[i] for i in range(self.num_tensors)]
        inverse = [1.0 / x for x in scales]
        to_p = lambda q: _scaled(q, scales)

        def maybe(fn):
            return None if fn is None else (lambda q, key: fn(to_p(q), key))

        return Task(
            name=self.name,
            init=lambda key: _scaled(t.init(key), inverse),
            sample_batch=t.sample_batch,
            loss=lambda q, batch: t.loss(to_p(q), batch),
            normalizer=t.normalizer,
            eval_loss=maybe(t.eval_loss),
            eval_accuracy=maybe(t.eval_accuracy),
        )
