"""Meta-learning a linear optimizer on the NQM with exact gradients (the paper's experiment E1).

The learned optimizer is ``phi <- (1 - gamma) phi - (alpha I + lambda diag(theta)) g``: a nominal
step ``alpha`` (0 switches it off), a learned diagonal perturbation ``P = lambda diag(theta)`` with
multiplier ``lambda`` (STAR scales its learned term down so that the nominal term dominates early)
and decoupled weight decay ``gamma``. The Hessian is a random rotation of log-spaced curvatures,
so a diagonal ``P`` cannot simply invert it: going faster on flat directions means larger steps on
stiff ones, and the meta-gradient pushes the most negative eigenvalue of ``A`` toward the edge at
-1. The worse the conditioning, the closer it gets: a speed-optimal linear method balances the
flat and stiff sides at ``rho = (kappa - 1) / (kappa + 1)``, which tends to 1 with the condition
number ``kappa``. The flat side keeps ``rho`` itself near 1 whatever is learned, unless weight decay
takes a margin ``gamma`` there. On the NQM the unroll is a ``lax.scan`` of a few matrix-vector
products, so ``jax.grad`` through it is exact and cheap; after each outer step we record ``rho(A)``
and both ends of the real spectrum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["NQMMetaConfig", "NQMMetaResult", "make_nqm", "meta_train_linear", "VARIANTS"]


@dataclass(frozen=True)
class NQMMetaConfig:
    """One E1 run. ``nominal = 0`` means no nominal term (``P`` alone sets the step)."""

    dim: int = 8
    h_min: float = 0.01
    h_max: float = 1.0
    noise: float = 1e-3  # variance of each coordinate of mu_t
    horizon: int = 50
    batch: int = 8  # unrolls (seeds) averaged per outer step
    outer_steps: int = 200
    outer_lr: float = 0.1
    nominal: float = 0.0
    perturbation_scale: float = 1.0
    theta_init: float = 0.1
    weight_decay: float = 0.0
    log_loss: bool = True  # meta-loss = log(mean loss): every direction counts, not only stiff ones
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1 or self.horizon < 1 or self.batch < 1 or self.outer_steps < 0:
            raise ValueError("dim, horizon and batch must be >= 1 and outer_steps >= 0")
        if not 0 < self.h_min <= self.h_max:
            raise ValueError(f"need 0 < h_min <= h_max, got {self.h_min}, {self.h_max}")
        if self.noise < 0 or self.nominal < 0 or self.perturbation_scale <= 0:
            raise ValueError("noise and nominal must be >= 0, perturbation_scale > 0")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if self.outer_lr <= 0:
            raise ValueError(f"outer_lr must be > 0, got {self.outer_lr}")


#: The three E1 variants: P alone; nominal + small P; nominal + small P + weight decay.
VARIANTS = {
    "linear": {"nominal": 0.0, "perturbation_scale": 1.0, "theta_init": 0.1, "weight_decay": 0.0},
    "nominal": {"nominal": 0.1, "perturbation_scale": 0.1, "theta_init": 0.0, "weight_decay": 0.0},
    "nominal_wd": {
        "nominal": 0.1,
        "perturbation_scale": 0.1,
        "theta_init": 0.0,
        "weight_decay": 0.02,
    },
}


@dataclass(frozen=True, eq=False)
class NQMMetaResult:
    config: NQMMetaConfig
    H: np.ndarray
    theta: np.ndarray
    meta_loss: np.ndarray  # (outer_steps,) loss at the theta *before* each update
    spectral_radius: np.ndarray  # (outer_steps + 1,) radius of A after 0..outer_steps updates
    min_real: np.ndarray  # most negative real part of eig(A) (stiff side, edge at -1)
    max_real: np.ndarray  # largest real part of eig(A) (flat side, edge at +1)
    nonfinite_steps: int = 0  # outer steps skipped because the meta-gradient was not finite

    def step_matrix(self, theta=None) -> np.ndarray:
        c = self.config
        t = self.theta if theta is None else np.asarray(theta)
        return c.nominal * np.eye(c.dim) + c.perturbation_scale * np.diag(t)

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "curvatures": np.linalg.eigvalsh(self.H).tolist(),
            "theta": self.theta.tolist(),
            "meta_loss": self.meta_loss.tolist(),
            "spectral_radius": self.spectral_radius.tolist(),
            "min_real": self.min_real.tolist(),
            "max_real": self.max_real.tolist(),
            "nonfinite_steps": self.nonfinite_steps,
        }


def make_nqm(cfg: NQMMetaConfig) -> np.ndarray:
    """The Hessian: log-spaced curvatures in a random (seeded) orthonormal basis."""
    rng = np.random.default_rng(cfg.seed)
    Q, _ = np.linalg.qr(rng.standard_normal((cfg.dim, cfg.dim)))
    return Q @ np.diag(np.logspace(np.log10(cfg.h_min), np.log10(cfg.h_max), cfg.dim)) @ Q.T


def _transition(cfg: NQMMetaConfig, H: np.ndarray, theta: np.ndarray) -> np.ndarray:
    S = cfg.nominal * np.eye(cfg.dim) + cfg.perturbation_scale * np.diag(theta)
    return (1.0 - cfg.weight_decay) * np.eye(cfg.dim) - S @ H


@functools.lru_cache(maxsize=16)
def _compiled_step(dim: int, horizon: int, batch: int, log_loss: bool):
    """One jitted outer step for a problem shape; every other setting is a traced argument, so
    the three E1 variants (and repeated runs) share one compilation."""
    import jax
    import jax.numpy as jnp
    import optax

    adam = optax.scale_by_adam()

    def unroll_loss(theta, hyper, H, init_root, key):
        S = hyper["nominal"] * jnp.eye(dim) + hyper["scale"] * jnp.diag(theta)
        k0, k1 = jax.random.split(key)
        phi0 = init_root @ jax.random.normal(k0, (dim,))
        mus = jnp.sqrt(hyper["noise"]) * jax.random.normal(k1, (horizon, dim))

        def body(phi, mu):
            diff = phi - mu
            g = H @ diff
            return (1.0 - hyper["weight_decay"]) * phi - S @ g, 0.5 * diff @ g

        _, losses = jax.lax.scan(body, phi0, mus)
        return losses.mean()

    def meta_loss(theta, hyper, H, init_root, key):
        keys = jax.random.split(key, batch)
        per_run = jax.vmap(unroll_loss, in_axes=(None, None, None, None, 0))
        loss = per_run(theta, hyper, H, init_root, keys).mean()
        return jnp.log(loss) if log_loss else loss

    def init(theta):
        return adam.init(theta)

    def step(theta, opt_state, hyper, H, init_root, key):
        loss, grad = jax.value_and_grad(meta_loss)(theta, hyper, H, init_root, key)
        # past the cliff a meta-gradient can overflow: such a step is skipped and counted. A
        # zero gradient would not do: Adam's momentum would still move theta and decay its state
        ok = jnp.all(jnp.isfinite(grad))
        updates, new_state = adam.update(jnp.where(ok, grad, 0.0), opt_state)
        new_theta = jnp.where(ok, theta - hyper["outer_lr"] * updates, theta)
        new_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, opt_state)
        return new_theta, new_state, loss, ok

    return init, jax.jit(step)


def meta_train_linear(
    cfg: NQMMetaConfig,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> NQMMetaResult:
    """Outer Adam on ``theta`` with exact meta-gradients through ``lax.scan`` unrolls.

    Each unroll starts at ``phi_0 ~ N(0, H^{-1})`` (equal initial loss in every eigen-direction) and
    sees fresh minima ``mu_t ~ N(0, noise I)``; the meta-loss is the mean training loss over the
    horizon (its log with ``log_loss``), averaged over ``batch`` seeded unrolls. Steps whose
    meta-gradient is not finite are skipped and counted in ``nonfinite_steps``.

    ``on_step()`` runs after every outer step (progress) and ``should_stop()`` before each; a
    stop returns the steps done so far (``len(result.meta_loss)`` of them).
    """
    import jax
    import jax.numpy as jnp

    H_np = make_nqm(cfg)
    H = jnp.asarray(H_np, jnp.float32)
    init_root = jnp.asarray(np.linalg.cholesky(np.linalg.inv(H_np)), jnp.float32)
    hyper = {
        "nominal": jnp.float32(cfg.nominal),
        "scale": jnp.float32(cfg.perturbation_scale),
        "weight_decay": jnp.float32(cfg.weight_decay),
        "noise": jnp.float32(cfg.noise),
        "outer_lr": jnp.float32(cfg.outer_lr),
    }
    init, step = _compiled_step(cfg.dim, cfg.horizon, cfg.batch, cfg.log_loss)
    theta = jnp.full((cfg.dim,), cfg.theta_init, jnp.float32)
    opt_state = init(theta)
    key = jax.random.PRNGKey(cfg.seed)
    losses, thetas, skipped = [], [np.asarray(theta, np.float64)], 0
    for _ in range(cfg.outer_steps):
        if should_stop is not None and should_stop():
            break
        key, sub = jax.random.split(key)
        theta, opt_state, loss, ok = step(theta, opt_state, hyper, H, init_root, sub)
        losses.append(float(loss))
        skipped += int(not bool(ok))
        thetas.append(np.asarray(theta, np.float64))
        if on_step is not None:
            on_step()
    eigs = [np.linalg.eigvals(_transition(cfg, H_np, t)) for t in thetas]
    return NQMMetaResult(
        config=cfg,
        H=H_np,
        theta=thetas[-1],
        meta_loss=np.asarray(losses),
        spectral_radius=np.array([np.abs(e).max() for e in eigs]),
        min_real=np.array([e.real.min() for e in eigs]),
        max_real=np.array([e.real.max() for e in eigs]),
        nonfinite_steps=skipped,
    )
