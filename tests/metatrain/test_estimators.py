"""Estimator correctness on a quadratic, where the exact meta-gradient is available."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lopt.metatrain.config import EstimatorConfig
from lopt.metatrain.estimators import allocate_slots, make_estimator

H = 16  # inner steps of a whole run
SLOTS = 2048


def exact_meta_grad(lo, family, theta, state, log=False):
    """Differentiate the full H-step unroll of every slot from its (fresh) initial state
    (``log``: of the mean log of the normalized loss, floored at 1e-3, written out here)."""

    def slot_loss(theta, params, cfg, run_key):
        task = family.task(cfg)
        params = jax.tree.map(lambda x: x[0], params)  # particle 0
        opt_state = lo.init_state(theta, params)
        total = 0.0
        for t in range(H):
            batch = task.sample_batch(jax.random.fold_in(run_key, t))
            loss, g = jax.value_and_grad(task.loss)(params, batch)
            value = task.normalizer(loss)
            total = total + (jnp.log(jnp.maximum(value, 1e-3)) if log else value)
            params, opt_state = lo.update(theta, opt_state, g, params, loss=loss)
        return total / H

    def mean_loss(theta):
        losses = jax.vmap(slot_loss, in_axes=(None, 0, 0, 0))(
            theta, state.params, state.cfg, state.key
        )
        return jnp.mean(losses)

    return jax.grad(mean_loss)(theta)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def make(lo, family, estimator, truncation, slots=SLOTS, **kw):
    cfg = EstimatorConfig(
        estimator=estimator,
        sigma=kw.pop("sigma", 0.01),
        truncation=truncation,
        horizon_min=H,
        horizon_max=H,
        num_slots=slots,
        random_offsets=False,
        **kw,
    )
    return make_estimator(lo, family, cfg)


def test_tbptt_whole_run_equals_exact(momentum_lo, quad_family):
    est = make(momentum_lo, quad_family, "tbptt", H, slots=16)
    theta = momentum_lo.init(None)
    state = est.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state[0])
    grad, _, diag = jax.jit(est.step)(theta, state, jax.random.PRNGKey(1))
    np.testing.assert_allclose(flat(grad), flat(exact), rtol=1e-4, atol=1e-6)
    assert int(diag["valid_pairs"]) == 16 and int(diag["dropped_pairs"]) == 0


def test_tbptt_log_meta_loss_equals_exact(momentum_lo, quad_family):
    est = make(momentum_lo, quad_family, "tbptt", H, slots=16, meta_loss="log",
               meta_loss_floor=1e-3)
    theta = momentum_lo.init(None)
    state = est.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state[0], log=True)
    plain = exact_meta_grad(momentum_lo, quad_family, theta, state[0])
    grad, _, _ = jax.jit(est.step)(theta, state, jax.random.PRNGKey(1))
    np.testing.assert_allclose(flat(grad), flat(exact), rtol=1e-4, atol=1e-6)
    assert rel_err(exact, plain) > 0.1  # the log objective is a different one


def rel_err(a, b):
    return np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b))


def test_es_whole_run_matches_exact(momentum_lo, quad_family):
    est = make(momentum_lo, quad_family, "es", H)
    theta = momentum_lo.init(None)
    state = est.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state[0])
    grad, _, diag = jax.jit(est.step)(theta, state, jax.random.PRNGKey(1))
    assert rel_err(grad, exact) < 0.1, (grad, exact)
    assert int(diag["valid_pairs"]) == SLOTS


def test_pes_over_truncations_matches_exact_and_full_es(momentum_lo, quad_family):
    """Averaging PES over the 4 truncations of one run estimates the full-unroll gradient."""
    theta = momentum_lo.init(None)
    pes = make(momentum_lo, quad_family, "pes", H // 4)
    state = pes.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state[0])
    step = jax.jit(pes.step)
    grads = []
    for i in range(4):
        g, state, diag = step(theta, state, jax.random.PRNGKey(10 + i))
        grads.append(flat(g))
        assert int(diag["finished_runs"]) == 0
    pes_grad = np.mean(grads, axis=0)
    assert np.linalg.norm(pes_grad - flat(exact)) / np.linalg.norm(flat(exact)) < 0.15

    es = make(momentum_lo, quad_family, "es", H)
    es_state = es.init(theta, jax.random.PRNGKey(0))
    es_grad, _, _ = jax.jit(es.step)(theta, es_state, jax.random.PRNGKey(99))
    assert np.linalg.norm(pes_grad - flat(es_grad)) / np.linalg.norm(flat(es_grad)) < 0.2

    # the last truncation was credited to all 4 perturbations of the run (acc ~ 2 sigma) ...
    assert abs(np.std(flat(state[0].acc)) / 0.01 - 2.0) < 0.1
    # ... then the next step restarts every slot: its accumulator holds one eps (~ sigma)
    _, state, diag = step(theta, state, jax.random.PRNGKey(20))
    assert int(diag["finished_runs"]) == SLOTS
    np.testing.assert_array_equal(np.asarray(state[0].step), H // 4)
    assert abs(np.std(flat(state[0].acc)) / 0.01 - 1.0) < 0.05


def test_pes_accumulator_sums_perturbations(momentum_lo, quad_family):
    theta = momentum_lo.init(None)
    pes = make(momentum_lo, quad_family, "pes", H // 4, slots=4)
    state = pes.init(theta, jax.random.PRNGKey(0))
    step = jax.jit(pes.step)
    _, s1, _ = step(theta, state, jax.random.PRNGKey(1))
    _, s2, _ = step(theta, s1, jax.random.PRNGKey(2))
    # acc after two truncations = eps1 + eps2: both non-zero, and differs from the first
    a1, a2 = flat(s1[0].acc), flat(s2[0].acc)
    assert np.all(a1 != 0) and not np.allclose(a1, a2)
    assert np.std(a2) > np.std(a1)  # grows like sqrt(k) sigma


def test_nonfinite_pairs_are_dropped_and_counted(momentum_lo, quad_family):
    """A diverging optimizer: raw losses overflow; the normalizer bounds them and counts them."""
    lo = type(momentum_lo)(log_lr=3.0)  # lr e^3 on curvature up to 2: diverges fast
    est = make(lo, quad_family, "pes", H // 2, slots=8)
    theta = lo.init(None)
    state = est.init(theta, jax.random.PRNGKey(0))
    step = jax.jit(est.step)
    grad, state, diag = step(theta, state, jax.random.PRNGKey(1))
    grad, state, diag = step(theta, state, jax.random.PRNGKey(2))
    assert int(diag["nonfinite_pairs"]) > 0
    assert int(diag["valid_pairs"]) + int(diag["dropped_pairs"]) == 8
    assert np.all(np.isfinite(flat(grad)))


def test_allocate_slots():
    assert allocate_slots(8, [1.0]) == (8,)
    assert allocate_slots(8, [1.0, 1.0]) == (4, 4)
    assert sum(allocate_slots(7, [0.2, 0.5, 0.3])) == 7
    assert min(allocate_slots(3, [0.01, 0.98, 0.01])) == 1


def test_mixture_groups_are_vmapped_separately_and_weighted_by_slots(momentum_lo):
    """Two shape groups: TBPTT over a whole run = slot-weighted mean of each group's exact."""
    from conftest import QuadraticFamily
    from lopt.tasks.base import TaskMixture

    groups = (QuadraticFamily(dim=4), QuadraticFamily(dim=3, name="q3"))
    mix = TaskMixture("mix", groups, weights=(0.75, 0.25))
    est = make(momentum_lo, mix, "tbptt", H, slots=8)
    assert est.slots == (6, 2)
    theta = momentum_lo.init(None)
    state = est.init(theta, jax.random.PRNGKey(0))
    assert state[0].params["x"].shape == (6, 1, 4) and state[1].params["x"].shape == (2, 1, 3)
    exact = [
        flat(exact_meta_grad(momentum_lo, g, theta, s))
        for g, s in zip(groups, state, strict=True)
    ]
    grad, _, diag = jax.jit(est.step)(theta, state, jax.random.PRNGKey(1))
    np.testing.assert_allclose(flat(grad), (6 * exact[0] + 2 * exact[1]) / 8, rtol=1e-4)
    assert int(diag["valid_pairs"]) == 8
