"""Linearization of the real learned optimizers (STAR, Blackbox) and the CLI on them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.analysis import linear as L
from lopt.analysis.linearize import linearize, stability_report, warm_state

optimizers = pytest.importorskip("lopt.optimizers")


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


@pytest.mark.parametrize("cls", ["STAR", "Blackbox"])
def test_default_learned_optimizers_linearize_to_finite_eigenvalues(cls):
    opt = getattr(optimizers, cls)()
    theta = opt.init(jax.random.PRNGKey(0))
    d = 6
    params0 = jax.random.normal(jax.random.PRNGKey(1), (d,))
    H = jnp.diag(jnp.array([0.01, 0.1, 0.5, 1.0, 3.0, 10.0]))
    mu = params0 - 1.0
    params, state = _warm_state(opt, theta, params0, H, mu)
    lin = linearize(opt, theta, state, params, H, mu)
    assert lin.jacobian.shape[0] == lin.jacobian.shape[1] > d  # accumulators are in the state
    assert np.all(np.isfinite(lin.eigenvalues))
    assert 0.9 < lin.spectral_radius < 1.5  # near the margin, as for any adaptive method


def test_star_stability_report_grid():
    opt = optimizers.STAR()
    theta = opt.init(jax.random.PRNGKey(0))
    rep = stability_report(opt, theta, [0.1, 10.0], [1e-2, 1.0], dim=4, warmup_steps=20)
    assert rep.spectral_radius.shape == (2, 2)
    assert np.all(np.isfinite(rep.spectral_radius))


def test_cli_star_and_saved_path(tmp_path, capsys):
    from lopt.cli.main import main

    argv = ["--curvature", "1", "--dim", "4", "--warmup", "20", "--json"]
    assert main(["stability", "--optimizer", "star", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.isfinite(out["spectral_radius"]) and isinstance(out["stable"], bool)
    assert out["lr"] is None and out["grad_scale"] == 1.0
    # a path to saved meta-parameters goes through lopt.load_meta_params
    opt = optimizers.STAR()
    path = tmp_path / "theta.safetensors"
    optimizers.save_meta_params(path, opt.init(jax.random.PRNGKey(0)), opt)
    assert main(["stability", "--optimizer", str(path), "--lr", "0.1", *argv]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["spectral_radius"] == pytest.approx(out["spectral_radius"], rel=1e-5)
    assert "does not apply" in captured.err and "note" in again


def test_cli_map_of_star(tmp_path, capsys):
    from lopt.cli.main import main

    out = tmp_path / "smap"
    argv = ["stability", "map", "--optimizer", "star", "--out", str(out), "--resolution", "3"]
    assert main([*argv, "--dim", "4", "--warmup", "20", "--curvature", "0.1,10"]) == 0
    data = json.loads((out / "map.json").read_text())
    assert data["x_name"] == "grad_scale" and data["y_name"] == "curvature"
    assert np.all(np.isfinite(np.array(data["spectral_radius"], dtype=float)))
    assert (out / "map.png").exists() and (out / "config.json").exists()
