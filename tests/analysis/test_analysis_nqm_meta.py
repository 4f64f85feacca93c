"""E1: meta-learned linear optimizers on the NQM move toward the stability edge."""

import dataclasses

import numpy as np
import pytest

from lopt.analysis.nqm_meta import VARIANTS, NQMMetaConfig, make_nqm, meta_train_linear


@pytest.fixture(scope="module")
def runs():
    return {name: meta_train_linear(NQMMetaConfig(**kw)) for name, kw in VARIANTS.items()}


def test_config_validation():
    with pytest.raises(ValueError):
        NQMMetaConfig(h_min=0.0)
    with pytest.raises(ValueError):
        NQMMetaConfig(weight_decay=1.5)
    with pytest.raises(ValueError):
        NQMMetaConfig(perturbation_scale=0.0)


def test_nqm_hessian_has_the_requested_spectrum():
    cfg = NQMMetaConfig(dim=5, h_min=0.01, h_max=2.0)
    np.testing.assert_allclose(np.linalg.eigvalsh(make_nqm(cfg)), np.logspace(-2, np.log10(2), 5))


def test_no_outer_step_was_skipped(runs):
    assert all(r.nonfinite_steps == 0 for r in runs.values())


def test_linear_variant_learns_and_drives_stiff_eigenvalue_toward_minus_one(runs):
    r = runs["linear"]
    assert r.meta_loss[-20:].mean() < r.meta_loss[:5].mean() - 0.5  # log-loss: >1.6x faster
    assert r.min_real[0] == pytest.approx(0.9, abs=1e-6)  # theta_init 0.1 on h_max = 1
    # it ends near the cliff: the stiff eigenvalue well past -0.6 on its way to -1, still stable
    assert r.min_real[-50:].mean() < -0.6
    assert r.spectral_radius[-50:].max() < 1.0
    assert r.spectral_radius[-1] > 0.95


def test_nominal_with_small_perturbation_stays_further_from_the_edge(runs):
    lin, nom = runs["linear"], runs["nominal"]
    assert nom.meta_loss[-20:].mean() < nom.meta_loss[:5].mean()  # it does learn
    margin_lin = 1 + lin.min_real[-50:].mean()
    margin_nom = 1 + nom.min_real[-50:].mean()
    assert margin_nom > margin_lin + 0.3


def test_weight_decay_keeps_a_flat_side_margin(runs):
    wd, nom = runs["nominal_wd"], runs["nominal"]
    gamma = VARIANTS["nominal_wd"]["weight_decay"]
    assert np.all(wd.max_real <= 1 - gamma + 1e-9)
    assert np.all(wd.spectral_radius < nom.spectral_radius + 1e-9)
    assert wd.spectral_radius.max() < 1 - gamma + 1e-9


def test_result_serializes():
    r = meta_train_linear(dataclasses.replace(NQMMetaConfig(), outer_steps=3))
    d = r.to_dict()
    assert len(d["meta_loss"]) == 3 and len(d["spectral_radius"]) == 4
    assert r.step_matrix().shape == (8, 8) and d["nonfinite_steps"] == 0


def test_nonfinite_meta_gradient_leaves_theta_and_adam_state_unchanged():
    """A skipped step is a no-op: with momentum in Adam, a zeroed gradient would still move."""
    import jax
    import jax.numpy as jnp

    from lopt.analysis.nqm_meta import _compiled_step

    cfg = NQMMetaConfig(dim=3, horizon=5, batch=2)
    init, step = _compiled_step(cfg.dim, cfg.horizon, cfg.batch, cfg.log_loss)
    H_np = make_nqm(cfg)
    H = jnp.asarray(H_np, jnp.float32)
    root = jnp.asarray(np.linalg.cholesky(np.linalg.inv(H_np)), jnp.float32)
    hyper = {k: jnp.float32(v) for k, v in
             dict(nominal=0.0, scale=1.0, weight_decay=0.0, noise=1e-3, outer_lr=0.1).items()}
    theta = jnp.full((cfg.dim,), 0.1, jnp.float32)
    theta, state, _, ok = step(theta, init(theta), hyper, H, root, jax.random.PRNGKey(0))
    assert bool(ok)  # a real step first, so Adam's moments are non-zero
    bad = dict(hyper, noise=jnp.float32(np.nan))  # NaN minima: NaN meta-gradient
    theta2, state2, _, ok2 = step(theta, state, bad, H, root, jax.random.PRNGKey(1))
    assert not bool(ok2)
    np.testing.assert_array_equal(np.asarray(theta2), np.asarray(theta))
    for a, b in zip(jax.tree.leaves(state2), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
