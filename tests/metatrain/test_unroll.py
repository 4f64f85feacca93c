"""Unrolls: every slot at once (one scan over a vmapped step) equals the per-slot unroll."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.metatrain.unroll import GroupUnroll, broadcast_leading
from lopt.optimizers import STAR
from lopt.tasks.registry import get as get_task


@pytest.mark.slow  # ~24 s; slots_unroll also runs in every estimator test
def test_slots_unroll_equals_the_vmapped_single_slot_unroll():
    """``slots_unroll`` (scan outside, vmap inside: traced once) against the reference
    formulation ``vmap(slot_unroll)`` (scan inside vmap), on a real family with STAR, per-slot
    configurations, step offsets and antithetic particles that differ."""
    opt = STAR()
    unroll = GroupUnroll(get_task("digits_mlp_family"), opt, truncation=3, horizon_min=3,
                         horizon_max=30, num_particles=2)
    slots = 3
    theta = opt.init(jax.random.PRNGKey(0))
    # two different thetas per slot (an antithetic pair), different across slots too
    noise = jax.tree.map(
        lambda x: 0.05 * jax.random.normal(jax.random.PRNGKey(1), (slots, 2) + x.shape), theta
    )
    thetas = jax.tree.map(lambda t, e: t + e, broadcast_leading(theta, (slots, 2)), noise)
    state = unroll.init(theta, jax.random.PRNGKey(2), slots)
    step0 = jnp.array([0, 6, 3], jnp.int32)
    args = (thetas, state.params, state.opt_state, state.cfg, step0, state.key)

    together = jax.jit(lambda *a: unroll.slots_unroll(*a, 4))(*args)
    reference = jax.jit(jax.vmap(lambda *a: unroll.slot_unroll(*a, 4)))(*args)

    assert together[2].shape == (slots, 4, 2)  # meta-losses [S, length, P]
    assert together[3].shape == (slots, 2)
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # the particles and the slots really differ (the comparison is not between constants)
    meta = np.asarray(together[2])
    assert not np.allclose(meta[:, :, 0], meta[:, :, 1])
    assert not np.allclose(meta[0], meta[1])


@pytest.mark.slow  # ~9 s
def test_init_draws_the_held_out_tasks_as_drawing_each_alone_would():
    """The held-out tasks drawn alongside the slots' own (one vectorized draw) are the draws
    of their keys one by one (un-vectorized oracle), and the slots are those of a plain init."""
    opt = STAR()
    unroll = GroupUnroll(get_task("digits_mlp_family"), opt, truncation=3, horizon_min=3,
                         horizon_max=30, num_particles=2)
    theta = opt.init(jax.random.PRNGKey(0))
    extra = jax.random.split(jax.random.PRNGKey(7), 3)
    state, drawn = jax.jit(lambda t, k, e: unroll.init(t, k, 4, e))(
        theta, jax.random.PRNGKey(2), extra
    )
    alone = jax.jit(lambda t, k: unroll.init(t, k, 4))(theta, jax.random.PRNGKey(2))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    one_by_one = [jax.jit(unroll.draw)(k) for k in extra]
    for i, single in enumerate(one_by_one):
        for a, b in zip(jax.tree.leaves(drawn), jax.tree.leaves(single), strict=True):
            np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))
    # the three draws are different tasks (the comparison is not between constants)
    assert any(not np.allclose(x[0], x[1]) for x in jax.tree.leaves(drawn.params))
