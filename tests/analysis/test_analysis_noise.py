"""Lyapunov predictions against simulation on random seeded NQMs."""

import numpy as np
import pytest

from lopt.analysis import linear as L
from lopt.analysis import noise as N

CASES = [
    ("sgd", {}),
    ("momentum", {"beta": 0.8}),
    ("heavy_ball", {"beta": 0.6}),
    ("nesterov", {"beta": 0.7}),
    ("aggmo", {"betas": (0.0, 0.5, 0.8)}),
    ("adam", {"beta": 0.5, "second_moment": "random"}),
    ("nominal_linear", {"P": "random"}),
    ("sgd", {"weight_decay": 0.05}),
]


def _random_nqm(seed, d=4):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.exp(rng.uniform(np.log(0.1), np.log(2.0), d))
    H = Q @ np.diag(ev) @ Q.T
    sigma = np.diag(rng.uniform(0.2, 1.0, d))
    return rng, H, sigma


def _build(name, kw, H, lr, rng):
    kw = dict(kw)
    if kw.get("second_moment") == "random":
        kw["second_moment"] = rng.uniform(0.5, 2.0, H.shape[0])
    if kw.get("P") == "random":
        kw["P"] = np.diag(rng.uniform(0.0, 0.3, H.shape[0]))
    return L.build(name, H, lr, **kw)


def _edge_lr(name, kw, H, rng):
    """Bisection (log scale) for the learning rate where rho(A) crosses 1 (the stability edge)."""
    state = rng.bit_generator.state
    lo, hi = 1e-4, 1e3

    def rho(lr):
        rng.bit_generator.state = state  # same random P / second moment for every trial
        return _build(name, kw, H, lr, rng).spectral_radius()

    assert rho(lo) < 1.0 < rho(hi)
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        if rho(mid) < 1.0:
            lo = mid
        else:
            hi = mid
    rng.bit_generator.state = state
    return lo


def test_gd_one_direction_closed_form():
    for alpha, h, s2 in [(0.1, 1.0, 1.0), (1.9, 1.0, 0.5), (0.5, 3.0, 2.0)]:
        got = N.stationary_loss(L.gradient_descent(h, alpha), s2)
        assert got == pytest.approx(h * s2 / (2 - alpha * h), rel=1e-12)
    assert N.stationary_loss(L.gradient_descent(1.0, 2.5), 1.0) == float("inf")
    with pytest.raises(ValueError, match="unstable"):
        N.stationary_covariance(L.gradient_descent(1.0, 2.5), 1.0)


def test_stationary_covariance_solves_lyapunov():
    _, H, sigma = _random_nqm(0)
    dyn = L.build("momentum", H, 0.5, beta=0.8)
    S = N.stationary_covariance(dyn, sigma)
    np.testing.assert_allclose(S, dyn.A @ S @ dyn.A.T + dyn.B @ sigma @ dyn.B.T, atol=1e-10)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_stable_runs_match_lyapunov_prediction(case):
    """rho < 1: runs stay bounded and the late average loss is within 3% of the prediction."""
    name, kw = CASES[case]
    for seed in (10 + case, 100 + case):
        rng, H, sigma = _random_nqm(seed)
        lr = rng.uniform(0.3, 0.9) * _edge_lr(name, kw, H, rng)
        dyn = _build(name, kw, H, lr, rng)
        rho = dyn.spectral_radius()
        assert rho < 0.995
        burn_in = int(np.ceil(np.log(1e-8) / (2 * np.log(rho))))
        pred = N.stationary_loss(dyn, sigma)
        x0 = np.zeros(dyn.state_dim)
        x0[: H.shape[0]] = 3.0
        losses = N.simulate(dyn, sigma, burn_in + 2000, num_runs=128, seed=seed, x0=x0)
        assert np.all(np.isfinite(losses))
        late = losses[:, burn_in:].mean()
        assert late == pytest.approx(pred, rel=0.03), (name, seed, rho, late, pred)
        assert losses.max() < 1e3 * (losses[:, 0].mean() + pred)


def test_expected_loss_curve_matches_simulation_and_converges():
    rng, H, sigma = _random_nqm(3)
    dyn = L.build("heavy_ball", H, 0.3, beta=0.5)
    assert dyn.spectral_radius() < 1
    x0 = np.concatenate([np.full(4, 2.0), np.zeros(4)])
    curve = N.expected_loss_curve(dyn, sigma, x0, 400)
    assert curve[-1] == pytest.approx(N.stationary_loss(dyn, sigma), rel=1e-6)
    sim = N.simulate(dyn, sigma, 400, num_runs=4000, seed=1, x0=x0).mean(axis=0)
    np.testing.assert_allclose(sim[:50], curve[:50], rtol=0.1)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_unstable_runs_diverge_at_rate_rho_squared(case):
    name, kw = CASES[case]
    rng, H, sigma = _random_nqm(200 + case)
    lr = rng.uniform(1.1, 1.5) * _edge_lr(name, kw, H, rng)
    dyn = _build(name, kw, H, lr, rng)
    rho = dyn.spectral_radius()
    assert rho > 1.01
    assert N.stationary_loss(dyn, sigma) == float("inf")
    steps = int(np.clip(30 / np.log(rho), 60, 3000))  # the mean loss grows by about e^60
    losses = N.simulate(dyn, sigma, steps, num_runs=32, seed=case)
    assert np.all(np.isfinite(losses))
    assert np.median(losses[:, -1]) > 1e12 * np.median(losses[:, :10])
    # losses grow like rho^(2t)
    log_l = np.log(np.median(losses, axis=0))
    t = np.arange(steps // 2, steps)
    slope = np.polyfit(t, log_l[t], 1)[0]
    assert slope == pytest.approx(2 * np.log(rho), rel=0.1)
