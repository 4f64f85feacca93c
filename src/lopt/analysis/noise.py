"""Noise on the NQM: stationary covariance and loss from the discrete Lyapunov equation.

With ``mu_t ~ N(0, Sigma)`` drawn afresh each step, the state of a linear optimizer
``x' = A x + B mu`` has, when ``rho(A) < 1``, a stationary covariance ``S = A S A^T + B Sigma B^T``.
The loss is evaluated on the same minibatch that produced the step, so the expected training loss at
stationarity is ``1/2 tr(H (C S C^T + Sigma))`` (``phi_t`` is independent of ``mu_t``). For gradient
descent in one direction this is ``h sigma^2 / (2 - alpha h)``, which diverges at the edge
``alpha h = 2``. :func:`simulate` draws the same process so the predictions can be checked.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from lopt.analysis.linear import LinearDynamics

__all__ = [
    "as_covariance",
    "stationary_covariance",
    "stationary_loss",
    "expected_loss_curve",
    "simulate",
]


def as_covariance(sigma, d: int) -> np.ndarray:
    """A ``(d, d)`` covariance from a scalar variance, a vector of variances or a PSD matrix."""
    arr = np.asarray(sigma, dtype=np.float64)
    if arr.ndim == 0:
        arr = float(arr) * np.eye(d)
    elif arr.ndim == 1:
        arr = np.diag(np.broadcast_to(arr, (d,)))
    if arr.shape != (d, d):
        raise ValueError(f"noise covariance must be {(d, d)}, got {arr.shape}")
    if np.linalg.eigvalsh((arr + arr.T) / 2).min() < -1e-12 * max(1.0, np.abs(arr).max()):
        raise ValueError("noise covariance must be positive semi-definite")
    return arr


def stationary_covariance(dyn: LinearDynamics, sigma) -> np.ndarray:
    """Solve ``S = A S A^T + B Sigma B^T``; ``ValueError`` when ``rho(A) >= 1`` (no limit)."""
    rho = dyn.spectral_radius()
    if not rho < 1.0:
        raise ValueError(
            f"dynamics are unstable (spectral radius {rho:.6g} >= 1): no stationary state"
        )
    Sig = as_covariance(sigma, dyn.param_dim)
    Q = dyn.B @ Sig @ dyn.B.T
    S = scipy.linalg.solve_discrete_lyapunov(dyn.A, Q)
    return (S + S.T) / 2


def _loss_from_cov(dyn: LinearDynamics, state_second_moment: np.ndarray, Sig: np.ndarray) -> float:
    P = dyn.C @ state_second_moment @ dyn.C.T
    return 0.5 * float(np.trace(dyn.H @ (P + Sig)))


def stationary_loss(dyn: LinearDynamics, sigma, *, include_noise: bool = True) -> float:
    """Expected loss at stationarity; ``inf`` when the dynamics are unstable.

    ``include_noise=True`` (default) gives the expected *training* loss ``E[L_t(phi_t)]`` on the
    current minibatch; ``False`` the loss at the true optimum, ``1/2 tr(H C S C^T)``.
    """
    if not dyn.spectral_radius() < 1.0:
        return float("inf")
    Sig = as_covariance(sigma, dyn.param_dim)
    S = stationary_covariance(dyn, Sig)
    return _loss_from_cov(dyn, S, Sig if include_noise else np.zeros_like(Sig))


def expected_loss_curve(dyn: LinearDynamics, sigma, x0, steps: int) -> np.ndarray:
    """Exact ``E[L_t]``, ``t = 0..steps-1``, from ``x_0 = x0`` (mean and covariance propagated)."""
    Sig = as_covariance(sigma, dyn.param_dim)
    A, Q = dyn.A, dyn.B @ Sig @ dyn.B.T
    mean = np.asarray(x0, dtype=np.float64).reshape(dyn.state_dim)
    cov = np.zeros((dyn.state_dim, dyn.state_dim))
    out = np.empty(steps)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            out[t] = _loss_from_cov(dyn, cov + np.outer(mean, mean), Sig)
            mean = A @ mean
            cov = A @ cov @ A.T + Q
    return out


def _sqrt_psd(Sig: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((Sig + Sig.T) / 2)
    return V * np.sqrt(np.clip(w, 0.0, None))


def simulate(
    dyn: LinearDynamics,
    sigma,
    steps: int,
    *,
    num_runs: int = 16,
    seed: int = 0,
    x0=None,
    stationary_start: bool = False,
) -> np.ndarray:
    """Losses ``L_t(phi_t) = 1/2 (phi_t - mu_t)^T H (phi_t - mu_t)`` of ``num_runs`` seeded runs.

    Returns an array ``(num_runs, steps)`` (float64; ``inf``/``nan`` once a run overflows).
    ``x0`` is the initial state (default zero); ``stationary_start=True`` draws it from the
    stationary distribution instead, so no burn-in is needed.
    """
    if steps < 1 or num_runs < 1:
        raise ValueError("steps and num_runs must be >= 1")
    rng = np.random.default_rng(seed)
    d, n = dyn.param_dim, dyn.state_dim
    Sig = as_covariance(sigma, d)
    root = _sqrt_psd(Sig)
    A, B, C, H = dyn.A, dyn.B, dyn.C, dyn.H
    if stationary_start:
        x = rng.standard_normal((num_runs, n)) @ _sqrt_psd(stationary_covariance(dyn, Sig)).T
    elif x0 is None:
        x = np.zeros((num_runs, n))
    else:
        x = np.broadcast_to(np.asarray(x0, dtype=np.float64), (num_runs, n)).copy()
    losses = np.empty((num_runs, steps))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            mu = rng.standard_normal((num_runs, d)) @ root.T
            diff = x @ C.T - mu
            losses[:, t] = 0.5 * np.einsum("ri,ij,rj->r", diff, H, diff)
            x = x @ A.T + mu @ B.T
    return losses
