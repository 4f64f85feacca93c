"""Small stand-ins for the engine tests: a noisy quadratic family and a two-parameter LO.

They implement the Task/TaskFamily and LearnedOptimizer contracts exactly, so the engine is
tested against the contracts rather than against one particular optimizer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from lopt.tasks.base import Task, clip_meta_loss

DIM = 4


@dataclasses.dataclass(frozen=True)
class QuadraticFamily:
    """``loss(x) = 0.5 sum h (x - b)^2`` with curvatures ``h`` drawn per task, noisy targets."""

    name: str = "test_quadratic"
    dim: int = DIM
    noise: float = 0.1

    def sample(self, key):
        return {"h": jax.random.uniform(key, (self.dim,), minval=0.5, maxval=2.0)}

    def task(self, cfg):
        h = cfg["h"]
        dim, noise = self.dim, self.noise

        def init(key):
            return {"x": 1.0 + 0.1 * jax.random.normal(key, (dim,))}

        def sample_batch(key):
            return noise * jax.random.normal(key, (dim,))

        def loss(params, batch):
            return 0.5 * jnp.sum(h * (params["x"] - batch) ** 2)

        return Task(self.name, init, sample_batch, loss, lambda v: clip_meta_loss(v, 50.0))


@dataclasses.dataclass(frozen=True)
class MomentumLO:
    """``m <- sigmoid(b) m + g``, ``x <- x - exp(a) m``: theta = {a, b}."""

    name: str = "momentum_lo"
    log_lr: float = -2.0
    logit_momentum: float = 0.0

    def init(self, key):
        del key
        return {"log_lr": jnp.float32(self.log_lr), "logit_m": jnp.float32(self.logit_momentum)}

    def init_state(self, theta, params):
        del theta
        return {"m": jax.tree.map(jnp.zeros_like, params)}

    def update(self, theta, opt_state, grads, params, *, loss=None):
        beta = jax.nn.sigmoid(theta["logit_m"])
        m = jax.tree.map(lambda m, g: beta * m + g, opt_state["m"], grads)
        lr = jnp.exp(theta["log_lr"])
        params = jax.tree.map(lambda p, m: p - lr * m, params, m)
        return params, {"m": m}

    def as_optax(self, theta):
        raise NotImplementedError

    # for trainer tests with a stand-in save function
    def config_dict(self):
        return dataclasses.asdict(self)


@pytest.fixture
def quad_family():
    return QuadraticFamily()


@pytest.fixture
def momentum_lo():
    return MomentumLO()


@pytest.fixture(autouse=True)
def _no_x64():
    assert not jax.config.jax_enable_x64
    yield
