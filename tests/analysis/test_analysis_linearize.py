"""Autodiff linearization of LearnedOptimizer objects equals the analytic state-space A."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.analysis import linear as L
from lopt.analysis.linearize import linearize, stability_report, step_map
from lopt.optimizers.base import LearnedOptimizer


@dataclass(frozen=True)
class HandGD:
    """Gradient descent (with decoupled weight decay) written as a LearnedOptimizer."""

    name: str = "hand_gd"
    weight_decay: float = 0.0

    def init(self, key):
        return {"lr": jnp.asarray(0.1)}

    def init_state(self, theta, params):
        return {"step": jnp.zeros((), jnp.int32)}

    def update(self, theta, opt_state, grads, params, *, loss=None):
        new = jax.tree.map(
            lambda p, g: (1 - self.weight_decay) * p - theta["lr"] * g, params, grads
        )
        return new, {"step": opt_state["step"] + 1}

    def as_optax(self, theta):
        raise NotImplementedError


@dataclass(frozen=True)
class HandMomentum:
    """EMA momentum m <- beta m + (1-beta) g, phi <- phi - lr m, state with an int counter."""

    name: str = "hand_momentum"

    def init(self, key):
        return {"lr": jnp.asarray(0.3), "beta": jnp.asarray(0.8)}

    def init_state(self, theta, params):
        return {"count": jnp.zeros((), jnp.int32), "m": jax.tree.map(jnp.zeros_like, params)}

    def update(self, theta, opt_state, grads, params, *, loss=None):
        b = theta["beta"]
        m = jax.tree.map(lambda m, g: b * m + (1 - b) * g, opt_state["m"], grads)
        new = jax.tree.map(lambda p, m: p - theta["lr"] * m, params, m)
        return new, {"count": opt_state["count"] + 1, "m": m}

    def as_optax(self, theta):
        raise NotImplementedError


@dataclass(frozen=True)
class HandRMSProp:
    """A genuinely nonlinear optimizer: v <- 0.9 v + 0.1 g^2, phi <- phi - lr g / sqrt(v + eps)."""

    name: str = "hand_rmsprop"

    def init(self, key):
        return {"lr": jnp.asarray(0.01)}

    def init_state(self, theta, params):
        return {"v": jnp.zeros_like(params), "t": jnp.zeros((), jnp.int32)}

    def update(self, theta, opt_state, grads, params, *, loss=None):
        v = 0.9 * opt_state["v"] + 0.1 * grads**2
        return params - theta["lr"] * grads / jnp.sqrt(v + 1e-8), {"v": v, "t": opt_state["t"] + 1}

    def as_optax(self, theta):
        raise NotImplementedError


def _hessian(seed, d):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return Q @ np.diag(np.exp(rng.uniform(np.log(0.1), np.log(3.0), d))) @ Q.T


def test_hand_written_optimizers_satisfy_the_protocol():
    for opt in (HandGD(), HandMomentum(), HandRMSProp()):
        assert isinstance(opt, LearnedOptimizer)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_gd_linearization_equals_analytic_A(wd):
    H = _hessian(0, 5)
    opt = HandGD(weight_decay=wd)
    theta = opt.init(jax.random.PRNGKey(0))
    params = jnp.asarray(np.random.default_rng(1).standard_normal(5), jnp.float32)
    lin = linearize(opt, theta, opt.init_state(theta, params), params, H)
    expected = L.build("sgd", H, 0.1, weight_decay=wd).A
    assert lin.jacobian.shape == (5, 5)  # the integer step counter is not in the state
    np.testing.assert_allclose(lin.jacobian, expected, rtol=1e-5, atol=1e-6)
    assert lin.spectral_radius == pytest.approx(L.spectral_radius(expected), rel=1e-5)


def test_momentum_linearization_equals_analytic_A_with_pytree_params():
    d = 4
    H = _hessian(2, d)
    opt = HandMomentum()
    theta = opt.init(jax.random.PRNGKey(0))
    # params as a pytree of two leaves; H acts on their concatenation
    params = {"a": jnp.ones(3), "b": jnp.full((1,), -2.0)}
    state = opt.init_state(theta, params)
    state = {"count": state["count"] + 7, "m": jax.tree.map(lambda x: x + 0.5, state["m"])}
    lin = linearize(opt, theta, state, params, H, mu=jnp.arange(d, dtype=jnp.float32))
    expected = L.ema_momentum(H, 0.3, 0.8).A
    assert lin.jacobian.shape == (2 * d, 2 * d)
    np.testing.assert_allclose(lin.jacobian, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.sort_complex(lin.eigenvalues),
        np.sort_complex(np.linalg.eigvals(expected)),
        atol=1e-5,
    )


def test_step_map_keeps_integer_leaves_fixed_and_matches_update():
    opt = HandMomentum()
    theta = opt.init(None)
    params = jnp.array([1.0, -1.0])
    state = opt.init_state(theta, params)
    f, z0, d = step_map(opt, theta, state, params, jnp.array([1.0, 2.0]))
    assert d == 2 and z0.shape == (4,)
    g = jnp.array([1.0, 2.0]) * params
    new_p, new_s = opt.update(theta, state, g, params)
    np.testing.assert_allclose(f(z0), jnp.concatenate([new_p, new_s["m"]]), rtol=1e-6)


def test_rmsprop_linearization_scale_invariance():
    """A nonlinear optimizer: its Jacobian depends on the state; v-normalized steps make the
    parameter block invariant to rescaling gradients and v together."""
    opt = HandRMSProp()
    theta = opt.init(None)
    params = jnp.array([0.5, -1.0, 2.0])
    base = linearize(opt, theta, {"v": jnp.full(3, 1.0), "t": jnp.array(3)}, params, 1.0)
    scaled = linearize(opt, theta, {"v": jnp.full(3, 100.0), "t": jnp.array(3)}, params, 10.0)
    np.testing.assert_allclose(base.jacobian[:3, :3], scaled.jacobian[:3, :3], rtol=2e-3)
    assert np.all(np.isfinite(base.eigenvalues))


def test_stability_report_gd_matches_closed_form():
    opt = HandGD()
    theta = opt.init(None)
    hs, ss = [0.5, 5.0, 19.0, 25.0], [1e-3, 1.0]
    rep = stability_report(opt, theta, hs, ss, dim=3, warmup_steps=3)
    expected = np.abs(1 - 0.1 * np.asarray(hs))
    np.testing.assert_allclose(rep.spectral_radius, np.repeat(expected[:, None], 2, 1), rtol=1e-5)
    np.testing.assert_array_equal(rep.stable[:, 0], [True, True, True, False])
    assert rep.to_dict()["settings"]["state_dim"] == 3


def test_stability_report_rmsprop_reports_finite_grid_and_gradient_scale():
    opt = HandRMSProp()
    theta = opt.init(None)
    rep = stability_report(opt, theta, [0.1, 1.0, 10.0], [1e-2, 1.0, 1e2], dim=4, warmup_steps=5)
    assert rep.spectral_radius.shape == (3, 3)
    assert np.all(np.isfinite(rep.spectral_radius))
    # where the warm-up steps (about lr each) are small against the distance s / h to the minimum,
    # the gradient RMS at the linearization point is the requested scale
    np.testing.assert_allclose(rep.grad_rms[0, 1:], [1.0, 1e2], rtol=0.05)
