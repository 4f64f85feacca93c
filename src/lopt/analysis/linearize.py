"""Linearization of any :class:`~lopt.optimizers.base.LearnedOptimizer` on a quadratic.

A nonlinear optimizer (a learned one included) is analysed like a linear one by differentiating its
update map around a state: on the quadratic ``L(phi) = 1/2 (phi - mu)^T H (phi - mu)`` one step is a
map ``z = (params, opt_state) -> z'``, and its Jacobian ``J = dz'/dz`` (``jax.jacfwd``) plays the
role of ``A``: ``rho(J) < 1`` means small perturbations of the trajectory shrink. Integer leaves
of the optimizer state (step counters) are not differentiable: they are held fixed at their current
value and excluded from ``z``. Because the map is nonlinear, ``J`` depends on where it is taken; the
:func:`stability_report` therefore first warms the optimizer state with a few real steps at a given
curvature and gradient scale and then linearizes, over a grid of both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "Linearization",
    "StabilityReport",
    "step_map",
    "linearize",
    "warm_state",
    "stability_report",
]


def _is_float(leaf) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _hessian_matrix(H, d: int, dtype) -> jax.Array:
    """``(d, d)`` Hessian from a matrix, a vector of diagonal curvatures or a scalar."""
    H = jnp.asarray(H, dtype=dtype)
    if H.ndim == 0:
        H = H * jnp.eye(d, dtype=dtype)
    elif H.ndim == 1:
        H = jnp.diag(H)
    if H.shape != (d, d):
        raise ValueError(f"Hessian must act on {d} parameters, got shape {H.shape}")
    return H


def step_map(optimizer, theta, opt_state, params, H, mu=None):
    """The flat one-step map ``z -> z'`` and the point ``z0`` for ``(params, opt_state)``.

    ``z`` is ``[ravel(params), ravel(float leaves of opt_state)]``; ``H`` acts on the raveled
    parameters (``(d, d)`` matrix, or a vector of diagonal curvatures, or a scalar); ``mu`` is the
    minimum (default zero). Returns ``(f, z0, num_params)``.
    """
    p_flat, unravel_params = ravel_pytree(params)
    d = p_flat.shape[0]
    dtype = p_flat.dtype
    H = _hessian_matrix(H, d, dtype)
    mu = jnp.zeros(d, dtype) if mu is None else jnp.broadcast_to(jnp.asarray(mu, dtype), (d,))

    leaves, treedef = jax.tree_util.tree_flatten(opt_state)
    mask = [_is_float(leaf) for leaf in leaves]
    fixed = [leaf for leaf, m in zip(leaves, mask, strict=True) if not m]
    s_flat, unravel_state = ravel_pytree([leaf for leaf, m in zip(leaves, mask, strict=True) if m])

    def rebuild(flat):
        floats, others = iter(unravel_state(flat)), iter(fixed)
        return treedef.unflatten([next(floats) if m else next(others) for m in mask])

    def f(z):
        p, s = z[:d], z[d:]
        diff = p - mu
        g = H @ diff
        loss = 0.5 * diff @ g
        new_params, new_state = optimizer.update(
            theta, rebuild(s), unravel_params(g), unravel_params(p), loss=loss
        )
        new_leaves, new_def = jax.tree_util.tree_flatten(new_state)
        if new_def != treedef:
            raise ValueError("optimizer changed the structure of its state during update")
        new_s, _ = ravel_pytree([x for x, m in zip(new_leaves, mask, strict=True) if m])
        new_p, _ = ravel_pytree(new_params)
        return jnp.concatenate([new_p.astype(z.dtype), new_s.astype(z.dtype)])

    z0 = jnp.concatenate([p_flat, s_flat.astype(dtype)])
    return f, z0, d


@dataclass(frozen=True, eq=False)
class Linearization:
    """The Jacobian of one optimizer step at a point, with its spectrum."""

    jacobian: np.ndarray
    num_params: int
    eigenvalues: np.ndarray = field(init=False)
    spectral_radius: float = field(init=False)

    def __post_init__(self):
        J = np.asarray(self.jacobian, dtype=np.float64)
        object.__setattr__(self, "jacobian", J)
        if np.all(np.isfinite(J)):
            eig = np.linalg.eigvals(J)
            rho = float(np.max(np.abs(eig))) if eig.size else 0.0
        else:
            eig, rho = np.full(J.shape[0], np.nan + 0j), float("inf")
        object.__setattr__(self, "eigenvalues", eig)
        object.__setattr__(self, "spectral_radius", rho)

    @property
    def stable(self) -> bool:
        return self.spectral_radius < 1.0


def linearize(optimizer, theta, opt_state, params, H, mu=None) -> Linearization:
    """Jacobian of ``(params, opt_state) -> next (params, opt_state)`` on the quadratic (jacfwd)."""
    f, z0, d = step_map(optimizer, theta, opt_state, params, H, mu)
    J = jax.jit(jax.jacfwd(f))(z0)  # one compiled call beats op-by-op dispatch for real LOs
    return Linearization(np.asarray(J), d)


def _quadratic_run(optimizer, theta, params, opt_state, H, mu, steps: int):
    def body(carry, _):
        p, st = carry
        diff = p - mu
        g = H @ diff
        return optimizer.update(theta, st, g, p, loss=0.5 * diff @ g), None

    (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), None, length=steps)
    return params, opt_state


def warm_state(optimizer, theta, params, H, mu=None, steps: int = 100, opt_state=None):
    """Run ``steps`` real optimizer steps on the quadratic (one jitted scan); returns
    ``(params, opt_state)``, e.g. to linearize at a state with filled accumulators.

    ``params`` is a flat vector here (the quadratic acts on it directly).
    """
    params = jnp.asarray(params)
    d = params.shape[0]
    H = _hessian_matrix(H, d, params.dtype)
    mu = jnp.zeros(d, params.dtype) if mu is None else jnp.asarray(mu, params.dtype)
    if opt_state is None:
        opt_state = optimizer.init_state(theta, params)
    run = jax.jit(lambda p, s: _quadratic_run(optimizer, theta, p, s, H, mu, steps))
    return run(params, opt_state)


@dataclass(frozen=True, eq=False)
class StabilityReport:
    """Spectral radius of a linearized optimizer over a grid ``curvatures x grad_scales``.

    ``spectral_radius[i, j]`` is for curvature ``curvatures[i]`` and gradient scale
    ``grad_scales[j]``; ``grad_rms`` is the gradient RMS actually seen at the linearization point.
    """

    curvatures: np.ndarray
    grad_scales: np.ndarray
    spectral_radius: np.ndarray
    grad_rms: np.ndarray
    settings: dict

    @property
    def stable(self) -> np.ndarray:
        return self.spectral_radius < 1.0

    def to_dict(self) -> dict:
        return {
            "curvatures": self.curvatures.tolist(),
            "grad_scales": self.grad_scales.tolist(),
            "spectral_radius": [[_json_float(x) for x in row] for row in self.spectral_radius],
            "grad_rms": [[_json_float(x) for x in row] for row in self.grad_rms],
            "stable": self.stable.tolist(),
            "settings": dict(self.settings),
        }


def _json_float(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


@functools.lru_cache(maxsize=32)
def _compiled_point(optimizer, dim: int, warmup_steps: int, param_scale: float):
    """Jitted ``(theta, h, s, key) -> (jacobian, grad_rms)`` on the isotropic quadratic ``h I``.

    Compiled once per optimizer configuration (a frozen, hashable dataclass) and reused for every
    grid point, every ``theta`` of the same structure and every later report: compiling a real
    learned optimizer costs seconds, one call afterwards milliseconds.
    """

    def point(theta, h, s, key):
        k1, k2 = jax.random.split(key)
        phi0 = param_scale * jax.random.normal(k1, (dim,))
        u = jax.random.normal(k2, (dim,))
        u = u / jnp.sqrt(jnp.mean(u**2))
        # minimum placed so that the gradient at phi0 is s * u (zero gradient when h == 0)
        mu = phi0 - jnp.where(h > 0, s / jnp.where(h > 0, h, 1.0), 0.0) * u
        H = h * jnp.eye(dim)
        state = optimizer.init_state(theta, phi0)
        params, state = _quadratic_run(optimizer, theta, phi0, state, H, mu, warmup_steps)
        f, z0, _ = step_map(optimizer, theta, state, params, H, mu)
        grad_rms = jnp.sqrt(jnp.mean((H @ (params - mu)) ** 2))
        return jax.jacfwd(f)(z0), grad_rms

    return jax.jit(point)


def _point_fn(optimizer, dim, warmup_steps, param_scale):
    try:
        return _compiled_point(optimizer, dim, warmup_steps, float(param_scale))
    except TypeError:  # an unhashable optimizer object: compile for this report only
        return _compiled_point.__wrapped__(optimizer, dim, warmup_steps, float(param_scale))


def stability_report(
    optimizer,
    theta,
    curvatures: Sequence[float],
    grad_scales: Sequence[float],
    *,
    dim: int = 8,
    warmup_steps: int = 10,
    param_scale: float = 1.0,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_point: Callable[[], None] | None = None,
) -> StabilityReport:
    """Spectral radius of ``optimizer`` (at meta-parameters ``theta``) per curvature and grad scale.

    For each point: parameters ``phi0 ~ param_scale * N(0, I_dim)``, the quadratic ``H = h I`` with
    its minimum placed so that the gradient at ``phi0`` has RMS ``s``; the optimizer runs
    ``warmup_steps`` real steps from a fresh state (filling its accumulators at that scale), then
    the step map is linearized there. All points share the seed, so the grid is comparable.

    The grid is computed one curvature (row) at a time; ``on_point()`` is called after every
    point (progress) and ``should_stop()`` between rows: when it returns True the report holds
    the rows finished so far (``curvatures`` is cut to them; possibly none).
    """
    hs = np.asarray(curvatures, dtype=np.float64).ravel()
    ss = np.asarray(grad_scales, dtype=np.float64).ravel()
    if hs.size == 0 or ss.size == 0:
        raise ValueError("need at least one curvature and one gradient scale")
    if np.any(hs < 0) or not np.all(np.isfinite(hs)):
        raise ValueError("curvatures must be finite and >= 0")
    if np.any(ss <= 0) or not np.all(np.isfinite(ss)):
        raise ValueError("gradient scales must be finite and > 0")
    if dim < 1 or warmup_steps < 0:
        raise ValueError("dim must be >= 1 and warmup_steps >= 0")
    point = _point_fn(optimizer, dim, warmup_steps, param_scale)
    key = jax.random.PRNGKey(seed)
    rho_rows, rms_rows, state_dim = [], [], None
    for h in hs:
        if should_stop is not None and should_stop():
            break
        rho_row, rms_row = [], []
        outs = [point(theta, jnp.float32(h), jnp.float32(s), key) for s in ss]  # async dispatch
        for J, r in outs:
            J = np.asarray(J, dtype=np.float64)
            state_dim = int(J.shape[-1])
            rho_row.append(Linearization(J, dim).spectral_radius)
            rms_row.append(float(r))
            if on_point is not None:
                on_point()
        rho_rows.append(rho_row)
        rms_rows.append(rms_row)
    done = len(rho_rows)
    settings = {
        "optimizer": getattr(optimizer, "name", type(optimizer).__name__),
        "dim": dim,
        "warmup_steps": warmup_steps,
        "param_scale": param_scale,
        "seed": seed,
        "state_dim": state_dim,
    }
    shape = (done, ss.size)
    return StabilityReport(
        hs[:done], ss, np.asarray(rho_rows, float).reshape(shape),
        np.asarray(rms_rows, float).reshape(shape), settings,
    )
