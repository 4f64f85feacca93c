"""Random per-tensor rescaling: the same problem in other coordinates (oracle: the base task)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt.tasks as T
from lopt.tasks.augment import RescaledFamily


def test_rescaled_task_is_the_base_problem_in_coordinates_q_equal_p_over_s():
    base = T.get("digits_mlp_family")
    fam = RescaledFamily(base, max_scale=10.0)
    cfg = fam.sample(jax.random.PRNGKey(3))
    t, tb = fam.task(cfg), base.task(cfg["base"])
    s = np.exp(np.asarray(cfg["log_scale"]))
    assert s.shape == (len(jax.tree.leaves(tb.init(jax.random.PRNGKey(0)))),)
    assert np.all((s >= 0.1 - 1e-6) & (s <= 10 + 1e-5)) and np.ptp(np.log(s)) > 0.5
    key, bkey = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    q, p = t.init(key), tb.init(key)
    for qi, pi, si in zip(jax.tree.leaves(q), jax.tree.leaves(p), s, strict=True):
        np.testing.assert_allclose(qi * si, pi, rtol=1e-6, atol=1e-7)  # same starting point
    batch = t.sample_batch(bkey)
    np.testing.assert_allclose(t.loss(q, batch), tb.loss(p, batch), rtol=1e-5)
    np.testing.assert_allclose(t.eval_loss(q, key), tb.eval_loss(p, key), rtol=1e-5)
    # chain rule: dL/dq = s * dL/dp, so a tensor with scale s wants steps 1/s as large
    gq, gp = jax.grad(t.loss)(q, batch), jax.grad(tb.loss)(p, batch)
    for a, b, si in zip(jax.tree.leaves(gq), jax.tree.leaves(gp), s, strict=True):
        np.testing.assert_allclose(a, si * b, rtol=1e-4, atol=1e-7)


def test_rescaled_family_vmaps_and_registry_mixture_wraps_every_group():
    mix = T.get("mlp_family_rescaled")
    assert [g.base.name for g in mix.groups] == [g.name for g in T.get("mlp_family").groups]
    fam = mix.groups[0]
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    cfgs = jax.vmap(fam.sample)(keys)

    def loss(cfg, key):
        task = fam.task(cfg)
        return task.loss(task.init(key), task.sample_batch(key))

    losses = jax.jit(jax.vmap(loss))(cfgs, keys)
    assert losses.shape == (4,) and bool(jnp.all(jnp.isfinite(losses)))
    with pytest.raises(ValueError, match="max_scale"):
        RescaledFamily(T.get("digits_mlp_family"), max_scale=0.5)


def test_identity_fraction_keeps_that_share_of_draws_unscaled():
    base = T.get("digits_mlp_family")
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    logs = np.asarray(jax.vmap(RescaledFamily(base, identity_fraction=0.5).sample)(keys)[
        "log_scale"])
    unscaled = np.all(logs == 0.0, axis=1)
    assert 0.4 < unscaled.mean() < 0.6  # binomial(400, 0.5): +-5 sd
    assert np.all(np.abs(logs[~unscaled]) > 0)  # the others are rescaled, every tensor
    never = np.asarray(jax.vmap(RescaledFamily(base).sample)(keys)["log_scale"])
    assert not np.any(np.all(never == 0.0, axis=1))
    with pytest.raises(ValueError, match="identity_fraction"):
        RescaledFamily(base, identity_fraction=1.5)
