"""Closed forms of the NQM state-space systems (method.md section 2)."""

import numpy as np
import pytest

from lopt.analysis import linear as L


def _random_hessian(rng, d, lo=0.05, hi=2.0):
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.exp(rng.uniform(np.log(lo), np.log(hi), d))
    return Q @ np.diag(ev) @ Q.T, ev


@pytest.mark.parametrize("alpha,h", [(0.1, 1.0), (1.5, 0.7), (3.0, 1.0), (0.01, 250.0)])
def test_gd_eigenvalue_is_one_minus_alpha_h(alpha, h):
    dyn = L.gradient_descent(h, alpha)
    np.testing.assert_allclose(dyn.eigenvalues(), [1 - alpha * h])
    assert dyn.is_stable() == (0 < alpha * h < 2)


def test_gd_full_hessian_eigenvalues():
    rng = np.random.default_rng(0)
    H, ev = _random_hessian(rng, 6)
    dyn = L.gradient_descent(H, 0.3)
    np.testing.assert_allclose(np.sort(dyn.eigenvalues().real), np.sort(1 - 0.3 * ev), atol=1e-12)
    np.testing.assert_allclose(dyn.B, 0.3 * H)


def test_ema_momentum_characteristic_polynomial():
    alpha, beta, h = 0.4, 0.8, 1.7
    eig = L.ema_momentum(h, alpha, beta).eigenvalues()
    expected = np.roots([1.0, -(1 + beta - alpha * (1 - beta) * h), beta])
    np.testing.assert_allclose(np.sort_complex(eig), np.sort_complex(expected), atol=1e-12)


def test_ema_momentum_stability_boundary_on_grid():
    """Stable iff 0 < alpha (1 - beta) h < 2 (1 + beta): checked on both sides of the edge."""
    h = 1.3
    checked = 0
    for beta in [0.0, 0.3, 0.5, 0.9, 0.99]:
        edge = 2 * (1 + beta) / ((1 - beta) * h)  # critical learning rate
        for factor in [0.01, 0.2, 0.5, 0.9, 0.99, 0.999, 1.001, 1.01, 1.1, 2.0, 10.0]:
            alpha = factor * edge
            rho = L.ema_momentum(h, alpha, beta).spectral_radius()
            assert (rho < 1) == (factor < 1), (beta, factor, rho)
            checked += 1
    assert checked == 55


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_heavy_ball_boundary(beta):
    h = 0.8
    edge = 2 * (1 + beta) / h
    assert L.heavy_ball(h, 0.99 * edge, beta).is_stable()
    assert not L.heavy_ball(h, 1.01 * edge, beta).is_stable()


def test_nesterov_matches_its_recursion():
    """The state-space form reproduces a direct simulation of the Nesterov recursion."""
    rng = np.random.default_rng(1)
    H, _ = _random_hessian(rng, 4)
    alpha, beta = 0.3, 0.7
    dyn = L.nesterov(H, alpha, beta)
    phi, m = rng.standard_normal(4), np.zeros(4)
    x = np.concatenate([phi, m])
    for _ in range(20):
        mu = rng.standard_normal(4)
        g = H @ (phi - mu)
        m = beta * m + g
        phi = phi - alpha * (g + beta * m)
        x = dyn.A @ x + dyn.B @ mu
    np.testing.assert_allclose(x[:4], phi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x[4:], m, rtol=1e-10, atol=1e-12)


def test_aggmo_matches_its_recursion_and_single_beta_is_heavy_ball():
    rng = np.random.default_rng(2)
    H, _ = _random_hessian(rng, 3)
    betas = [0.0, 0.9, 0.99]
    dyn = L.aggmo(H, 0.1, betas)
    assert dyn.state_dim == 12
    phi, ms = rng.standard_normal(3), [np.zeros(3) for _ in betas]
    x = np.concatenate([phi, *ms])
    for _ in range(15):
        mu = rng.standard_normal(3)
        g = H @ (phi - mu)
        ms = [b * m + g for b, m in zip(betas, ms, strict=True)]
        phi = phi - 0.1 * np.mean(ms, axis=0)
        x = dyn.A @ x + dyn.B @ mu
    np.testing.assert_allclose(x[:3], phi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(L.aggmo(H, 0.2, [0.6]).A, L.heavy_ball(H, 0.2, 0.6).A, atol=1e-14)
    np.testing.assert_allclose(
        L.aggmo(H, 0.2, [0.6], ema=True).A, L.ema_momentum(H, 0.2, 0.6).A, atol=1e-14
    )


@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5])
def test_weight_decay_shifts_every_gd_eigenvalue_by_minus_gamma(gamma):
    rng = np.random.default_rng(3)
    H, _ = _random_hessian(rng, 5)
    base = np.sort(L.gradient_descent(H, 0.4).eigenvalues().real)
    decayed = np.sort(L.with_weight_decay(L.gradient_descent(H, 0.4), gamma).eigenvalues().real)
    np.testing.assert_allclose(decayed, base - gamma, atol=1e-12)


def test_weight_decay_gives_flat_directions_a_margin():
    H = np.diag([0.0, 1e-6, 1.0])
    assert L.gradient_descent(H, 0.1).spectral_radius() == pytest.approx(1.0)
    dyn = L.with_weight_decay(L.gradient_descent(H, 0.1), 0.05)
    assert dyn.spectral_radius() == pytest.approx(0.95)
    # a learned perturbation with |P h| below the margin cannot destabilise a flat direction
    H = np.diag([1e-3, 1.0])
    P = np.diag([-40.0, 0.0])  # P h = -0.04 in the flat direction
    assert not L.nominal_linear(H, 0.1, P).is_stable()
    assert L.with_weight_decay(L.nominal_linear(H, 0.1, P), 0.05).is_stable()


def test_weight_decay_composes_with_momentum():
    dyn = L.build("momentum", 1.0, 0.1, beta=0.9, weight_decay=0.1)
    phi, m, g_phi = 1.0, 0.0, None
    x = np.array([phi, m])
    for _ in range(5):
        g_phi = 1.0 * phi
        m = 0.9 * m + 0.1 * g_phi
        phi = (1 - 0.1) * phi - 0.1 * m
        x = dyn.A @ x
    np.testing.assert_allclose(x, [phi, m], rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_adam_frozen_is_invariant_to_loss_rescaling(beta):
    """The system depends on D^{-1/2} H only: H -> c H, D -> c^2 D leaves the eigenvalues fixed."""
    rng = np.random.default_rng(4)
    H, _ = _random_hessian(rng, 4)
    v = rng.uniform(0.1, 3.0, 4)
    base = L.adam_frozen(H, 0.05, v, beta=beta)
    for c in [1e-3, 0.5, 7.0, 1e4]:
        scaled = L.adam_frozen(c * H, 0.05, c**2 * v, beta=beta)
        np.testing.assert_allclose(
            np.sort_complex(scaled.eigenvalues()), np.sort_complex(base.eigenvalues()), atol=1e-10
        )
        if beta == 0.0:  # with momentum A is only similar (the momentum block scales by c)
            np.testing.assert_allclose(scaled.A, base.A, atol=1e-10)
    # ... while plain GD is not invariant
    assert L.gradient_descent(7.0 * H, 0.05).spectral_radius() != pytest.approx(
        L.gradient_descent(H, 0.05).spectral_radius()
    )


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_adam_frozen_matches_its_recursion(beta):
    """Frozen-preconditioner Adam simulated directly: ``m' = beta m + (1 - beta) g``,
    ``phi' = (1 - gamma) phi - alpha m' / sqrt(v + eps)``, against ``x' = A x + B mu``."""
    rng = np.random.default_rng(6)
    H, _ = _random_hessian(rng, 3)
    v, alpha, eps, gamma = rng.uniform(0.1, 3.0, 3), 0.2, 1e-3, 0.05
    dyn = L.with_weight_decay(L.adam_frozen(H, alpha, v, beta=beta, eps=eps), gamma)
    phi, m = rng.standard_normal(3), np.zeros(3)
    x = np.concatenate([phi, m]) if beta else phi.copy()
    for _ in range(15):
        mu = rng.standard_normal(3)
        g = H @ (phi - mu)
        m = beta * m + (1 - beta) * g
        phi = (1 - gamma) * phi - alpha * m / np.sqrt(v + eps)
        x = dyn.A @ x + dyn.B @ mu
    np.testing.assert_allclose(x[:3], phi, rtol=1e-10, atol=1e-12)
    if beta:
        np.testing.assert_allclose(x[3:], m, rtol=1e-10, atol=1e-12)


def test_adam_frozen_equals_preconditioned_gd():
    H = np.diag([1.0, 4.0])
    v = np.array([4.0, 16.0])
    np.testing.assert_allclose(
        L.adam_frozen(H, 0.5, v).A, L.nominal_linear(H, 0.0, 0.5 / np.sqrt(v)).A
    )


def test_nominal_linear_form():
    rng = np.random.default_rng(5)
    H, _ = _random_hessian(rng, 3)
    P = 0.1 * rng.standard_normal((3, 3))
    np.testing.assert_allclose(L.nominal_linear(H, 0.2, P).A, np.eye(3) - (0.2 * np.eye(3) + P) @ H)
    np.testing.assert_allclose(L.nominal_linear(H, 0.2).A, L.gradient_descent(H, 0.2).A)


def test_with_hessian_and_build_all_names():
    for name in L.OPTIMIZERS:
        dyn = L.build(name, [0.5, 1.0], 0.1, beta=0.5)
        assert np.isfinite(dyn.spectral_radius())
        other = dyn.with_hessian([2.0, 3.0])
        assert other.A.shape == dyn.A.shape


@pytest.mark.parametrize(
    "call",
    [
        lambda: L.gradient_descent(-1.0, 0.1),
        lambda: L.gradient_descent(1.0, 0.0),
        lambda: L.gradient_descent(1.0, -0.1),
        lambda: L.ema_momentum(1.0, 0.1, 1.0),
        lambda: L.ema_momentum(1.0, 0.1, -0.1),
        lambda: L.aggmo(1.0, 0.1, []),
        lambda: L.build("nope", 1.0, 0.1),
        lambda: L.with_weight_decay(L.gradient_descent(1.0, 0.1), -0.1),
        lambda: L.gradient_descent(np.array([[1.0, 2.0], [0.0, 1.0]]), 0.1),
    ],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_spectral_radius_helper():
    assert L.spectral_radius(np.array([[0.0, 1.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    assert L.spectral_radius(np.array([[np.inf]])) == float("inf")
