"""Stability analysis on the noisy quadratic model (spec: method.md section 2).

Modules, one job each:

* :mod:`~lopt.analysis.linear`: linear optimizers as state-space systems ``x' = A x + B mu``
  (GD, EMA momentum, heavy-ball, Nesterov, AggMo, frozen-preconditioner Adam, nominal-plus-linear,
  decoupled weight decay on top of any of them) and the spectral radius.
* :mod:`~lopt.analysis.noise`: stationary covariance and loss under NQM noise (discrete
  Lyapunov equation) and seeded simulation of loss trajectories.
* :mod:`~lopt.analysis.linearize`: ``jax.jacfwd`` linearization of any ``LearnedOptimizer``
  (STAR, Blackbox, ...) and its stability report over curvature x gradient scale.
* :mod:`~lopt.analysis.maps`: stability maps and the ``rho = 1`` edge, PNG + JSON + CSV.
* :mod:`~lopt.analysis.nqm_meta`: experiment E1, linear optimizers meta-learned on the NQM.

Names are re-exported lazily so that importing the package does not pull in JAX. The function
``linearize`` is not re-exported: its module of the same name would shadow it once imported; use
``lopt.analysis.linearize.linearize``.
"""

from __future__ import annotations

from lopt.utils.lazy import lazy_getattr

_LAZY = {
    "LinearDynamics": "linear",
    "build": "linear",
    "spectral_radius": "linear",
    "with_weight_decay": "linear",
    "stationary_covariance": "noise",
    "stationary_loss": "noise",
    "expected_loss_curve": "noise",
    "simulate": "noise",
    "warm_state": "linearize",
    "stability_report": "linearize",
    "stability_map": "maps",
    "learned_map": "maps",
    "save_map": "maps",
    "meta_train_linear": "nqm_meta",
    "NQMMetaConfig": "nqm_meta",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("lopt.analysis", _LAZY)
