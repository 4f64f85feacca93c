"""Linear optimizers on a quadratic as state-space systems ``x' = A x + B mu``.

On the noisy quadratic model (NQM) the loss at step t is ``1/2 (phi - mu_t)^T H (phi - mu_t)``,
so the gradient ``g = H (phi - mu_t)`` is linear in the parameters. Every optimizer whose update
is linear in its state and the gradient,

    x' = M x + N g,      phi = C x,

is then a linear system  ``x' = (M + N H C) x - N H mu``,  i.e. ``A = M + N H C`` and ``B = -N H``.
We store ``(M, N, C, H)`` rather than only ``(A, B)`` because two operations need the pieces:
decoupled weight decay acts on ``M`` (``phi <- (1 - gamma) phi``), and the same optimizer can be
re-assembled for another Hessian. Stability is ``rho(A) = max |eig(A)| < 1``.

State layouts (``d`` = number of parameters, blocks of size ``d``):

* ``gd``:            ``x = [phi]``
* ``ema_momentum``:  ``x = [phi, m]``, ``m' = beta m + (1 - beta) g``, ``phi' = phi - alpha m'``
* ``heavy_ball``:    ``x = [phi, m]``, ``m' = beta m + g``, ``phi' = phi - alpha m'``
* ``nesterov``:      ``x = [phi, m]``, ``m' = beta m + g``, ``phi' = phi - alpha (g + beta m')``
* ``aggmo``:         ``x = [phi, m_1..m_K]``, ``m_i' = beta_i m_i + c_i g``,
  ``phi' = phi - alpha mean_i m_i'`` (``c_i = 1``, or ``1 - beta_i`` with ``ema=True``)
* ``adam_frozen``:   like ``gd`` / ``ema_momentum`` with the step ``alpha D^{-1/2}``
* ``nominal_linear``: ``x = [phi]``, ``phi' = phi - (alpha I + P) g``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LinearDynamics",
    "as_hessian",
    "gradient_descent",
    "ema_momentum",
    "heavy_ball",
    "nesterov",
    "aggmo",
    "adam_frozen",
    "nominal_linear",
    "with_weight_decay",
    "spectral_radius",
    "eigenvalues",
    "build",
    "OPTIMIZERS",
]


def as_hessian(h) -> np.ndarray:
    """A symmetric PSD Hessian from a matrix, a vector of eigenvalues (diagonal H) or a scalar."""
    arr = np.asarray(h, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = np.diag(arr)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(
            f"Hessian must be a scalar, a vector or a square matrix, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("Hessian has non-finite entries")
    if not np.allclose(arr, arr.T, atol=1e-10 * max(1.0, np.abs(arr).max())):
        raise ValueError("Hessian must be symmetric")
    if np.linalg.eigvalsh(arr).min() < -1e-12 * max(1.0, np.abs(arr).max()):
        raise ValueError("Hessian must be positive semi-definite (curvatures >= 0)")
    return arr


def _check_lr(alpha: float) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"learning rate must be > 0, got {alpha}")
    return alpha


def _check_beta(beta: float, name: str = "beta") -> float:
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta}")
    return beta


@dataclass(frozen=True, eq=False)
class LinearDynamics:
    """A linear optimizer on a quadratic: ``x' = M x + N g``, ``phi = C x``, ``g = H (phi - mu)``.

    ``A`` and ``B`` are derived (``A = M + N H C``, ``B = -N H``). ``info`` records the
    hyper-parameters that produced the system, for reports.
    """

    M: np.ndarray
    N: np.ndarray
    C: np.ndarray
    H: np.ndarray
    name: str = "linear"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ("M", "N", "C", "H"):
            object.__setattr__(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        n, d = self.M.shape[0], self.H.shape[0]
        if self.M.shape != (n, n):
            raise ValueError(f"M must be square, got {self.M.shape}")
        if self.N.shape != (n, d):
            raise ValueError(f"N must have shape {(n, d)}, got {self.N.shape}")
        if self.C.shape != (d, n):
            raise ValueError(f"C must have shape {(d, n)}, got {self.C.shape}")

    @property
    def state_dim(self) -> int:
        return self.M.shape[0]

    @property
    def param_dim(self) -> int:
        return self.H.shape[0]

    @property
    def A(self) -> np.ndarray:
        return self.M + self.N @ self.H @ self.C

    @property
    def B(self) -> np.ndarray:
        return -self.N @ self.H

    def with_hessian(self, H) -> LinearDynamics:
        """The same optimizer on another quadratic of the same dimension."""
        H = as_hessian(H)
        if H.shape != self.H.shape:
            raise ValueError(f"Hessian shape {H.shape} differs from {self.H.shape}")
        return LinearDynamics(self.M, self.N, self.C, H, self.name, dict(self.info))

    def eigenvalues(self) -> np.ndarray:
        return np.linalg.eigvals(self.A)

    def spectral_radius(self) -> float:
        return spectral_radius(self.A)

    def is_stable(self) -> bool:
        return self.spectral_radius() < 1.0


def eigenvalues(A) -> np.ndarray:
    return np.linalg.eigvals(np.asarray(A, dtype=np.float64))


def spectral_radius(A) -> float:
    """``max |eig(A)|``; the dynamics ``x' = A x`` converge iff it is < 1."""
    A = np.asarray(A)
    if A.size == 0:
        return 0.0
    if not np.all(np.isfinite(A)):
        return float("inf")
    return float(np.max(np.abs(np.linalg.eigvals(A))))


def _blocks(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    return np.block([[np.asarray(b, dtype=np.float64) for b in row] for row in rows])


def _selector(d: int, k: int) -> np.ndarray:
    """``C``: the parameters are the first of ``k`` blocks of the state."""
    C = np.zeros((d, d * k))
    C[:, :d] = np.eye(d)
    return C


def _precond_matrix(precond, d: int) -> np.ndarray:
    if precond is None:
        return np.eye(d)
    p = np.asarray(precond, dtype=np.float64)
    if p.ndim == 0:
        return float(p) * np.eye(d)
    if p.ndim == 1:
        if p.shape != (d,):
            raise ValueError(f"diagonal preconditioner must have length {d}, got {p.shape}")
        return np.diag(p)
    if p.shape != (d, d):
        raise ValueError(f"preconditioner must be {(d, d)}, got {p.shape}")
    return p


def gradient_descent(H, lr: float) -> LinearDynamics:
    """``phi' = phi - alpha g``: per curvature h the eigenvalue is ``1 - alpha h``."""
    H = as_hessian(H)
    alpha = _check_lr(lr)
    d = H.shape[0]
    return LinearDynamics(np.eye(d), -alpha * np.eye(d), np.eye(d), H, "sgd", {"lr": alpha})


def _two_block_momentum(H, alpha, beta, gain, step_from_m, step_from_g, name, info):
    """Shared builder for ``m' = beta m + gain g``, ``phi' = phi - a_m m - a_g g``."""
    d = H.shape[0]
    eye, zero = np.eye(d), np.zeros((d, d))
    M = _blocks([[eye, -step_from_m * beta * eye], [zero, beta * eye]])
    N = np.vstack([-(step_from_m * gain + step_from_g) * eye, gain * eye])
    return LinearDynamics(M, N, _selector(d, 2), H, name, info)


def ema_momentum(H, lr: float, beta: float) -> LinearDynamics:
    """``m' = beta m + (1 - beta) g``, ``phi' = phi - alpha m'``.

    Characteristic polynomial per curvature h: ``z^2 - (1 + beta - alpha (1-beta) h) z + beta``;
    stable iff ``0 < alpha (1 - beta) h < 2 (1 + beta)``.
    """
    H = as_hessian(H)
    alpha, beta = _check_lr(lr), _check_beta(beta)
    info = {"lr": alpha, "beta": beta}
    return _two_block_momentum(H, alpha, beta, 1.0 - beta, alpha, 0.0, "momentum", info)


def heavy_ball(H, lr: float, beta: float) -> LinearDynamics:
    """``m' = beta m + g``, ``phi' = phi - alpha m'``: stable iff ``0 < alpha h < 2 (1 + beta)``."""
    H = as_hessian(H)
    alpha, beta = _check_lr(lr), _check_beta(beta)
    info = {"lr": alpha, "beta": beta}
    return _two_block_momentum(H, alpha, beta, 1.0, alpha, 0.0, "heavy_ball", info)


def nesterov(H, lr: float, beta: float) -> LinearDynamics:
    """``m' = beta m + g``, ``phi' = phi - alpha (g + beta m')`` (the PyTorch/optax form)."""
    H = as_hessian(H)
    alpha, beta = _check_lr(lr), _check_beta(beta)
    d = H.shape[0]
    eye, zero = np.eye(d), np.zeros((d, d))
    M = _blocks([[eye, -alpha * beta * beta * eye], [zero, beta * eye]])
    N = np.vstack([-alpha * (1.0 + beta) * eye, eye])
    return LinearDynamics(M, N, _selector(d, 2), H, "nesterov", {"lr": alpha, "beta": beta})


def aggmo(H, lr: float, betas: Sequence[float] = (0.0, 0.9, 0.99), *, ema: bool = False):
    """Aggregated momentum: ``m_i' = beta_i m_i + c_i g``, ``phi' = phi - alpha mean_i m_i'``.

    ``c_i = 1`` is Lucas et al.'s AggMo; ``ema=True`` uses ``c_i = 1 - beta_i`` (the mean of EMA
    momenta, as in STAR's nominal AggMo term).
    """
    H = as_hessian(H)
    alpha = _check_lr(lr)
    betas = [_check_beta(b, "each AggMo beta") for b in betas]
    if not betas:
        raise ValueError("AggMo needs at least one beta")
    k, d = len(betas), H.shape[0]
    eye, zero = np.eye(d), np.zeros((d, d))
    gains = [(1.0 - b) if ema else 1.0 for b in betas]
    top = [eye] + [-(alpha / k) * b * eye for b in betas]
    rows = [top]
    for i, b in enumerate(betas):
        rows.append([zero] + [b * eye if j == i else zero for j in range(k)])
    M = _blocks(rows)
    N = np.vstack([-(alpha / k) * sum(gains) * eye] + [c * eye for c in gains])
    info = {"lr": alpha, "betas": list(betas), "ema": ema}
    return LinearDynamics(M, N, _selector(d, k + 1), H, "aggmo", info)


def adam_frozen(H, lr: float, second_moment, *, beta: float = 0.0, eps: float = 0.0):
    """Adam with a frozen diagonal preconditioner: step ``alpha D^{-1/2}`` on ``g`` or on momentum.

    ``second_moment`` is the frozen ``v`` (``D = diag(v)``), a scalar or one value per parameter;
    ``beta`` is the first-moment decay (0: no momentum, RMSProp-like). With ``eps = 0`` the system
    depends on ``D^{-1/2} H`` only, so rescaling the loss by ``c`` (``H -> c H``, ``v -> c^2 v``)
    leaves ``A`` unchanged.
    """
    H = as_hessian(H)
    alpha, beta = _check_lr(lr), _check_beta(beta)
    d = H.shape[0]
    v = np.broadcast_to(np.asarray(second_moment, dtype=np.float64), (d,))
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("second moment must be finite and >= 0")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if np.any(v + eps <= 0):
        raise ValueError("second moment + eps must be > 0")
    P = np.diag(1.0 / np.sqrt(v + eps))
    info = {"lr": alpha, "beta": beta, "second_moment": v.tolist(), "eps": eps}
    if beta == 0.0:
        return LinearDynamics(np.eye(d), -alpha * P, np.eye(d), H, "adam", info)
    eye, zero = np.eye(d), np.zeros((d, d))
    M = _blocks([[eye, -alpha * beta * P], [zero, beta * eye]])
    N = np.vstack([-alpha * (1.0 - beta) * P, (1.0 - beta) * eye])
    return LinearDynamics(M, N, _selector(d, 2), H, "adam", info)


def nominal_linear(H, lr: float, P=None) -> LinearDynamics:
    """The nominal-plus-linear learned optimizer ``phi' = phi - (alpha I + P) g``.

    ``A = I - (alpha I + P) H``; ``P`` is a matrix, a diagonal vector or ``None`` (zero). ``lr`` may
    be 0 here (a purely learned ``P``), but not negative.
    """
    H = as_hessian(H)
    alpha = float(lr)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"nominal step must be >= 0, got {alpha}")
    d = H.shape[0]
    Pm = np.zeros((d, d)) if P is None else _precond_matrix(P, d)
    info = {"lr": alpha, "P": Pm.tolist()}
    N = -(alpha * np.eye(d) + Pm)
    return LinearDynamics(np.eye(d), N, np.eye(d), H, "nominal_linear", info)


def with_weight_decay(dyn: LinearDynamics, gamma: float) -> LinearDynamics:
    """Add decoupled weight decay ``phi <- (1 - gamma) phi - ...`` to any linear optimizer.

    It subtracts ``gamma C^T C`` from ``M``: for gradient descent every eigenvalue moves by
    ``-gamma``, so flat directions (h ~ 0) get a stability margin ``gamma``.
    """
    gamma = float(gamma)
    if not np.isfinite(gamma) or not 0.0 <= gamma < 1.0:
        raise ValueError(f"weight decay must be in [0, 1), got {gamma}")
    M = dyn.M - gamma * dyn.C.T @ dyn.C
    info = dict(dyn.info, weight_decay=gamma + dyn.info.get("weight_decay", 0.0))
    return LinearDynamics(M, dyn.N, dyn.C, dyn.H, dyn.name, info)


#: Names accepted by :func:`build` (the CLI's analytic optimizers).
OPTIMIZERS = ("sgd", "momentum", "heavy_ball", "nesterov", "aggmo", "adam", "nominal_linear")


def build(
    name: str,
    H,
    lr: float,
    *,
    beta: float = 0.9,
    betas: Sequence[float] = (0.0, 0.9, 0.99),
    second_moment=1.0,
    weight_decay: float = 0.0,
    P=None,
) -> LinearDynamics:
    """Build a named linear optimizer (see ``OPTIMIZERS``) with optional weight decay.

    ``beta`` is the momentum for momentum/heavy_ball/nesterov and the first-moment decay for adam
    (0 disables Adam's momentum); ``betas`` are AggMo's decays.
    """
    if name in ("sgd", "gd"):
        dyn = gradient_descent(H, lr)
    elif name == "momentum":
        dyn = ema_momentum(H, lr, beta)
    elif name == "heavy_ball":
        dyn = heavy_ball(H, lr, beta)
    elif name == "nesterov":
        dyn = nesterov(H, lr, beta)
    elif name == "aggmo":
        dyn = aggmo(H, lr, betas)
    elif name == "adam":
        dyn = adam_frozen(H, lr, second_moment, beta=beta)
    elif name == "nominal_linear":
        dyn = nominal_linear(H, lr, P)
    else:
        raise ValueError(
            f"unknown linear optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if weight_decay:
        dyn = with_weight_decay(dyn, weight_decay)
    return dyn
