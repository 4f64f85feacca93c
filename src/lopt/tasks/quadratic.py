"""Quadratic problems: a deterministic ill-conditioned quadratic and the noisy quadratic model.

The noisy quadratic model (NQM, spec section 2): ``L_t(phi) = 1/2 (phi - mu_t)^T H (phi - mu_t)``
with a fresh minimum ``mu_t ~ N(0, Sigma)`` each step (the "batch" is ``mu_t``). ``H`` is
diagonal with eigenvalues log-spaced in ``[h_min, h_max]``; ``Sigma = sigma^2 I``.

Normalizer: quadratics have no "chance level" like a classifier, so the meta-loss is the loss
divided by its expected value at initialization, clipped to ``[0, 1.5]`` (non-finite -> 1.5).
1.0 means "no progress", 1.5 "clearly diverging", mirroring the classifier bound of
1.5 x ln(classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from lopt.tasks.base import Task, clip_meta_loss

#: Bound of the normalized quadratic meta-loss (relative to the expected initial loss).
QUADRATIC_BOUND = 1.5


def eigenvalues(dim: int, h_min: float, h_max: float) -> jax.Array:
    return jnp.asarray(jnp.logspace(math.log10(h_min), math.log10(h_max), dim), jnp.float32)


def _quadratic_task(name, h, init_std, sigma, eval_loss=True) -> Task:
    """``h`` may be traced; ``sigma == 0`` gives the deterministic quadratic."""
    dim = h.shape[0]
    expected_init = 0.5 * jnp.sum(h) * (init_std**2 + sigma**2)

    def init(key):
        return {"phi": init_std * jax.random.normal(key, (dim,), jnp.float32)}

    def sample_batch(key):
        if sigma == 0:
            return {"mu": jnp.zeros((dim,), jnp.float32)}
        return {"mu": sigma * jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params, batch):
        d = params["phi"] - batch["mu"]
        return 0.5 * jnp.sum(h * d * d)

    def noise_free(params, key):
        del key
        return 0.5 * jnp.sum(h * params["phi"] ** 2)

    def normalizer(value):
        return clip_meta_loss(value / expected_init, QUADRATIC_BOUND)

    return Task(name, init, sample_batch, loss, normalizer, noise_free if eval_loss else None)


def quadratic_task(
    dim: int = 16, h_min: float = 1e-2, h_max: float = 1.0, init_std: float = 1.0
) -> Task:
    """Deterministic quadratic ``1/2 phi^T H phi`` (condition number ``h_max / h_min``)."""
    _check(dim, h_min, h_max, init_std, 0.0)
    return _quadratic_task("quadratic", eigenvalues(dim, h_min, h_max), init_std, 0.0, False)


def nqm_task(
    dim: int = 16,
    h_min: float = 1e-2,
    h_max: float = 1.0,
    init_std: float = 1.0,
    sigma: float = 0.3,
) -> Task:
    """The noisy quadratic model; ``eval_loss`` is the noise-free loss ``1/2 phi^T H phi``."""
    _check(dim, h_min, h_max, init_std, sigma)
    return _quadratic_task("nqm", eigenvalues(dim, h_min, h_max), init_std, sigma)


def _check(dim, h_min, h_max, init_std, sigma):
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not 0 < h_min <= h_max:
        raise ValueError(f"need 0 < h_min <= h_max, got h_min={h_min}, h_max={h_max}")
    if init_std <= 0:
        raise ValueError(f"init_std must be > 0, got {init_std}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")


@dataclass(frozen=True)
class QuadraticFamily:
    """NQMs of one dimension whose curvature scale varies: ``H = s * diag(logspace)``.

    Configuration: ``{"log_scale": f32}`` with ``s`` log-uniform in ``scale_range``.
    """

    name: str = "quadratic_family"
    dim: int = 16
    h_min: float = 1e-2
    h_max: float = 1.0
    scale_range: tuple[float, float] = (0.1, 10.0)
    sigma: float = 0.3
    init_std: float = 1.0

    def __post_init__(self):
        _check(self.dim, self.h_min, self.h_max, self.init_std, self.sigma)
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")

    def sample(self, key):
        lo, hi = self.scale_range
        return {"log_scale": jax.random.uniform(key, (), jnp.float32, math.log(lo), math.log(hi))}

    def task(self, cfg) -> Task:
        h = jnp.exp(cfg["log_scale"]) * eigenvalues(self.dim, self.h_min, self.h_max)
        return _quadratic_task(self.name, h, self.init_std, self.sigma)
