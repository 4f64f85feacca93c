"""Prodigy's distance estimate (``distance_feature``) against optax's Prodigy, the outside oracle.

The end-to-end comparison with the NumPy reference (every switch pairing) lives in
``test_update_vs_reference.py``; here the estimator alone follows optax.contrib.prodigy's
``estim_lr`` over a run where it grows by orders of magnitude, and the switch's plumbing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.optimizers import STAR, Blackbox
from lopt.optimizers.distance import D0, distance_feature, init_distance, update_distance


def quadratic_run(steps: int = 60):
    """Prodigy itself on an ill-conditioned quadratic: the (params, grads, estim_lr) it saw."""
    h = {"w": jnp.linspace(0.5, 5.0, 12).reshape(4, 3), "b": jnp.array([2.0, 0.1])}
    loss = lambda p: 0.5 * sum(jnp.sum(h[k] * (p[k] - 3.0) ** 2) for k in p)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.full((2,), -1.0)}
    opt = optax.contrib.prodigy(learning_rate=1.0)
    state = opt.init(params)
    seen = []
    for _ in range(steps):
        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        seen.append((params, grads, float(state.estim_lr)))
        params = optax.apply_updates(params, updates)
    return seen


def test_estimate_follows_optax_prodigy():
    seen = quadratic_run()
    dist = init_distance(seen[0][0])
    step = jax.jit(update_distance)
    ours = []
    for t, (params, grads, _) in enumerate(seen):
        dist = step(dist, jnp.asarray(t, jnp.int32), grads, params)
        ours.append(float(dist.d))
    want = np.array([d for *_, d in seen])
    assert want[-1] > 1e4 * D0  # the estimate really moved: this is not a constant check
    np.testing.assert_allclose(ours, want, rtol=2e-5)


def test_estimate_never_shrinks_and_ignores_a_zero_gradient():
    params = {"w": jnp.ones((3,))}
    dist = init_distance(params)
    dist = update_distance(dist, 0, {"w": jnp.zeros((3,))}, params)  # sum |s| = 0: stays d0
    assert float(dist.d) == pytest.approx(D0)
    moved = {"w": jnp.zeros((3,))}  # moved by -1 along a gradient of +1: <g, x0 - x> > 0
    dist = update_distance(dist, 1, {"w": jnp.ones((3,))}, moved)
    grown = float(dist.d)
    assert grown > D0
    dist = update_distance(dist, 2, {"w": -jnp.ones((3,))}, moved)  # numerator falls
    assert float(dist.d) == grown


def test_feature_is_log_of_the_estimate_in_units_of_alpha():
    np.testing.assert_allclose(distance_feature(jnp.float32(1e-1), 1e-3), [np.log(100.0) / 5],
                               rtol=1e-6)
    assert STAR(alpha=3e-3).distance_unit == 3e-3
    assert STAR(alpha=0.0).distance_unit == 1e-3
    assert Blackbox().distance_unit == 1e-3


@pytest.mark.parametrize("cls", [STAR, Blackbox])
def test_switch_adds_one_input_and_the_state(cls):
    off, on = cls(), cls(distance_feature=True)
    assert on.num_inputs == off.num_inputs + 1
    assert cls(distance_feature=True, tensor_features=True).num_inputs == off.num_inputs + 7
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    theta = on.init(jax.random.PRNGKey(0))
    assert theta["mlp"]["w0"].shape[0] == on.num_inputs
    assert off.init_state(off.init(jax.random.PRNGKey(0)), params).distance is None
    state = on.init_state(theta, params)
    np.testing.assert_array_equal(state.distance.params0["w"], params["w"])
    grads = jax.tree.map(jnp.ones_like, params)
    _, new = jax.jit(on.deltas)(theta, state, grads, params)
    want = update_distance(state.distance, 0, grads, params)
    np.testing.assert_array_equal(new.distance.d, want.d)
    np.testing.assert_array_equal(new.distance.grad_sum["w"], want.grad_sum["w"])
    assert on.config()["distance_feature"] is True
    assert type(on).from_config(on.config()) == on


def test_the_input_changes_the_update():
    """A theta that weighs the distance input: a different estimate, a different step."""
    opt = STAR(distance_feature=True, output_init_scale=1.0, step_multiplier=1e-3)
    theta = opt.init(jax.random.PRNGKey(1))
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
    grads = {"w": jnp.linspace(0.5, -0.3, 12).reshape(4, 3)}
    state = opt.init_state(theta, params)
    far = state._replace(distance=state.distance._replace(d=jnp.float32(1.0)))
    near, _ = opt.deltas(theta, state, grads, params)
    moved, _ = opt.deltas(theta, far, grads, params)
    assert not np.allclose(near["w"], moved["w"])


def test_a_step_that_donates_params_and_state_runs():
    """The state holds a copy of the initial parameters, not the caller's buffer: donating
    both (the usual fast training step) must not hand XLA one buffer twice."""
    tx = STAR(distance_feature=True).as_optax(STAR(distance_feature=True).init(
        jax.random.PRNGKey(0)))
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        grads = jax.tree.map(lambda p: p - 0.5, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    assert np.all(np.isfinite(params["w"])) and float(state.inner_state.distance.d) > D0
