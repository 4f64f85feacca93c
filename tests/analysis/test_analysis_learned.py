"""Linearization of the real learned optimizers (STAR, Blackbox) and the CLI on them.

Oracles: central finite differences of the independent NumPy reference
(``tests/reference``) for the default optimizers, and closed forms for STAR configurations that
are linear (SGD nominal, learned term off) or linear at rest (Adam nominal at a zero gradient).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.analysis import linear as L
from lopt.analysis.linearize import linearize, stability_report, warm_state
from reference.adafactor_mlp_reference import ReferenceOptimizer

optimizers = pytest.importorskip("lopt.optimizers")

#: The accumulators (momenta, v, factored) decay at most at 0.999 at meta-initialization and do
#: not feed back into the parameters of a linear STAR: the largest of its "other" eigenvalues.
SLOWEST_DECAY = 0.999


def _warm_state(opt, theta, params, H, mu, steps=20):
    return warm_state(opt, theta, params, H, mu, steps=steps)


def test_star_with_blackbox_off_and_sgd_nominal_is_analytic_gd_with_weight_decay():
    opt = optimizers.STAR(nominal="sgd", step_multiplier=0.0, alpha=0.1, weight_decay=0.5)
    theta = opt.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    H = Q @ np.diag([0.1, 0.5, 2.0, 5.0]) @ Q.T
    params, state = _warm_state(
        opt, theta, jnp.ones(4), jnp.asarray(H, jnp.float32), jnp.zeros(4), steps=5
    )
    lin = linearize(opt, theta, state, params, H)
    expected = L.with_weight_decay(L.gradient_descent(H, 0.1), opt.effective_weight_decay).A
    # the accumulators do not feed back into the parameters here: the parameter block is A
    np.testing.assert_allclose(lin.jacobian[:4, :4], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.jacobian[:4, 4:], 0.0, atol=1e-7)
    assert np.max(np.abs(np.linalg.eigvals(expected))) <= lin.spectral_radius + 1e-6


def reference_jacobian(opt, kind, theta, state, params, H, mu):
    """Central finite differences, in float64, of the NumPy reference's one-step map on the
    quadratic, in the layout of :func:`linearize` for a vector parameter: ``[phi, m (3 x d),
    v (d), full second-moment EMAs (3 x d)]``."""
    ref = ReferenceOptimizer(kind, opt.config())
    th = jax.tree.map(np.asarray, theta)
    H, mu = np.asarray(H, np.float64), np.asarray(mu, np.float64)
    d, t = params.shape[0], int(state.step)

    def f(z):
        p, m, v, full = np.split(z, [d, 4 * d, 5 * d])
        st = {"m": m.reshape(3, d), "v": v, "full": full.reshape(3, d)}
        (new_p,), new_state, _ = ref.step(th, {"t": t, "leaves": [st]}, [H @ (p - mu)], [p])
        new = new_state["leaves"][0]
        return np.concatenate([new_p, new["m"].ravel(), new["v"], new["full"].ravel()])

    leaf = state.leaves
    assert leaf.col.size == 0  # a vector: the factored statistics are one full EMA ("row")
    z0 = np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in (params, leaf.m, leaf.v, leaf.row)])
    J = np.zeros((z0.size, z0.size))
    for k in range(z0.size):
        h = 1e-5 * abs(z0[k]) + 1e-9  # relative steps: v and the EMAs are ~1e-4
        e = np.zeros_like(z0)
        e[k] = h
        J[:, k] = (f(z0 + e) - f(z0 - e)) / (2 * h)
    return J


@pytest.mark.parametrize("cls", ["STAR", "Blackbox"])
def test_default_learned_optimizers_linearize_like_the_reference(cls):
    """The autodiff Jacobian of the real update equals finite differences of the independent
    reference, entry by entry (the parameter block deviates from the identity by only ~1e-4,
    so it gets its own absolute tolerance), and so does the spectral radius."""
    opt = getattr(optimizers, cls)()
    theta = opt.init(jax.random.PRNGKey(0))
    d = 6
    params0 = jax.random.normal(jax.random.PRNGKey(1), (d,))
    H = jnp.diag(jnp.array([0.01, 0.1, 0.5, 1.0, 3.0, 10.0]))
    mu = params0 - 1.0
    params, state = _warm_state(opt, theta, params0, H, mu)
    lin = linearize(opt, theta, state, params, H, mu)
    assert lin.jacobian.shape == (8 * d, 8 * d)  # accumulators are in the state
    J = reference_jacobian(opt, cls.lower(), theta, state, params, H, mu)
    np.testing.assert_allclose(lin.jacobian, J, rtol=1e-4, atol=1e-3 * np.abs(J).max())
    np.testing.assert_allclose(lin.jacobian[:d, :d], J[:d, :d], rtol=0, atol=1e-6)
    assert np.abs(J[:d, :d] - np.eye(d)).max() > 1e-5  # the update really moves the params
    np.testing.assert_allclose(lin.spectral_radius, np.abs(np.linalg.eigvals(J)).max(),
                               rtol=1e-5)


@pytest.mark.parametrize("nominal_decay,stable", [(0.0, True), (0.5, False)])
def test_nominal_adam_star_at_rest_is_frozen_adam_with_momentum(nominal_decay, stable):
    """At a zero gradient the second moment stops moving, so STAR with the Adam nominal term
    and no learned term is exactly Adam with a frozen preconditioner there (method.md section
    2): its eigenvalues are those of ``adam_frozen`` with weight decay, plus the decays of the
    accumulators that do not feed back into the parameters."""
    wd, alpha = 0.5, 0.05
    opt = optimizers.STAR(nominal="adam", alpha=alpha, step_multiplier=0.0, weight_decay=wd)
    theta = opt.init(jax.random.PRNGKey(0))
    # offset 0.5: momentum decay 0.87 instead of 0.999, which makes the stiff direction
    # (h = 40, v = 1e-4) unstable: alpha (1 - beta) h / sqrt(v) > 2 (1 + beta)
    theta["decays"]["momentum"] = theta["decays"]["momentum"].at[2].set(nominal_decay)
    decays = {k: np.asarray(v, np.float64)
              for k, v in opt.accumulators.decays(theta["decays"]).items()}
    beta = decays["momentum"][2]
    d = 3
    H = np.diag([0.5, 2.0, 40.0])
    mu = jnp.array([0.3, -1.0, 2.0])
    v0 = np.array([1.0, 4e-2, 1e-4])
    state = opt.init_state(theta, mu)
    state = state._replace(leaves=state.leaves._replace(v=jnp.asarray(v0, jnp.float32)))
    lin = linearize(opt, theta, state, mu, H, mu)  # at rest: params at the minimum, m = 0
    frozen = L.with_weight_decay(
        L.adam_frozen(H, alpha, decays["rms"] * v0, beta=beta, eps=1e-6),
        opt.effective_weight_decay,
    )
    others = np.concatenate([np.repeat(decays["momentum"][:2], d), np.full(d, decays["rms"]),
                             np.repeat(decays["factored"], d)])
    expected = np.sort_complex(np.concatenate([frozen.eigenvalues(), others]))
    np.testing.assert_allclose(np.sort_complex(lin.eigenvalues), expected, atol=2e-5)
    np.testing.assert_allclose(
        lin.spectral_radius, max(frozen.spectral_radius(), others.max()), rtol=1e-5
    )
    assert lin.stable == frozen.is_stable() == stable


def sgd_star_radius(alpha, h):
    """STAR(nominal="sgd", no learned term, no decay): ``phi' = phi - alpha h (phi - mu)``."""
    return max(abs(1.0 - alpha * h), SLOWEST_DECAY)


def sgd_star():
    return optimizers.STAR(nominal="sgd", alpha=0.5, step_multiplier=0.0, weight_decay=0.0)


def test_star_stability_report_grid_is_closed_form():
    """A linear STAR: the report's radius is max(|1 - alpha h|, 0.999) for every gradient
    scale; unstable where alpha h > 2."""
    opt = sgd_star()
    hs, scales = [0.1, 1.0, 5.0], [1e-2, 1.0]
    rep = stability_report(opt, opt.init(jax.random.PRNGKey(0)), hs, scales, dim=4,
                           warmup_steps=20)
    expected = [[sgd_star_radius(0.5, h)] * len(scales) for h in hs]
    np.testing.assert_allclose(rep.spectral_radius, expected, rtol=1e-5)
    assert rep.stable.tolist() == [[True, True], [True, True], [False, False]]
    # the default STAR gives a finite report on the same grid
    star = optimizers.STAR()
    rep = stability_report(star, star.init(jax.random.PRNGKey(0)), hs, scales, dim=4,
                           warmup_steps=20)
    assert rep.spectral_radius.shape == (3, 2) and np.all(np.isfinite(rep.spectral_radius))


def test_cli_star_and_saved_path(tmp_path, capsys):
    from lopt.cli.main import main

    argv = ["--dim", "4", "--warmup", "20", "--json"]
    assert main(["stability", "--optimizer", "star", "--curvature", "1", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["spectral_radius"]) and isinstance(out["stable"], bool)
    assert out["lr"] is None and out["grad_scale"] == 1.0
    # a path to saved meta-parameters goes through lopt.load_meta_params, switches included:
    # the saved linear STAR is unstable at curvature 5 and stable at 1, in closed form
    path = tmp_path / "theta.safetensors"
    opt = sgd_star()
    optimizers.save_meta_params(path, opt.init(jax.random.PRNGKey(0)), opt)
    assert main(["stability", "--optimizer", str(path), "--lr", "0.1", "--curvature", "1,5",
                 *argv]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["spectral_radius"] == pytest.approx(sgd_star_radius(0.5, 5.0), rel=1e-5)
    assert again["spectral_radius_per_curvature"] == pytest.approx(
        [sgd_star_radius(0.5, 1.0), sgd_star_radius(0.5, 5.0)], rel=1e-5)
    assert again["stable"] is False
    assert "does not apply" in captured.err and "note" in again


def test_cli_map_of_saved_linear_star(tmp_path, capsys):
    from lopt.cli.main import main

    path = tmp_path / "theta.safetensors"
    opt = sgd_star()
    optimizers.save_meta_params(path, opt.init(jax.random.PRNGKey(0)), opt)
    out = tmp_path / "smap"
    argv = ["stability", "map", "--optimizer", str(path), "--out", str(out), "--resolution", "3"]
    assert main([*argv, "--dim", "4", "--warmup", "20", "--curvature", "0.1,10"]) == 0
    data = json.loads((out / "map.json").read_text())
    assert data["x_name"] == "grad_scale" and data["y_name"] == "curvature"
    rho = np.array(data["spectral_radius"], dtype=float)
    hs = np.array(data["y_values"], dtype=float)
    np.testing.assert_allclose(hs, [0.1, 1.0, 10.0], rtol=1e-6)
    expected = [[sgd_star_radius(0.5, h)] * rho.shape[1] for h in hs]
    np.testing.assert_allclose(rho, expected, rtol=1e-5)
    assert (out / "map.png").exists() and (out / "config.json").exists()
