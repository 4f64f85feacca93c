"""Estimator correctness on a quadratic, where the exact meta-gradient is available."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import QuadraticFamily
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


# -- truncations by hand ----------------------------------------------------------------------


def hand_truncation(lo, family, theta, cfg, params, opt_state, run_key, step0, length):
    """One slot, one particle: ``length`` inner steps from ``step0`` on the run's batches
    ``fold_in(run_key, step0 + t)`` (the documented data contract). Returns the new params and
    optimizer state and the truncation's meta-loss (mean normalized loss)."""
    task = family.task(cfg)
    losses = []
    for t in range(length):
        batch = task.sample_batch(jax.random.fold_in(run_key, step0 + t))
        loss, g = jax.value_and_grad(task.loss)(params, batch)
        losses.append(task.normalizer(loss))
        params, opt_state = lo.update(theta, opt_state, g, params, loss=loss)
    return params, opt_state, jnp.mean(jnp.stack(losses))


def hand_pair(lo, family, theta, eps, state, length, signs, particle=0):
    """Every slot's particles ``theta + sign * eps`` from the state of particle ``particle``."""
    take = lambda x: x[:, particle]
    run = jax.vmap(
        lambda e, cfg, p, s, k, t0, sign: hand_truncation(
            lo, family, jax.tree.map(lambda a, b: a + sign * b, theta, e), cfg, p, s, k, t0,
            length,
        ),
        in_axes=(0, 0, 0, 0, 0, 0, None),
    )
    args = (eps, state.cfg, jax.tree.map(take, state.params), jax.tree.map(take, state.opt_state),
            state.key, state.step)
    return [jax.jit(run)(*args, jnp.float32(s)) for s in signs]


def test_truncated_es_pair_restarts_from_the_positive_member_by_hand(momentum_lo, quad_family):
    """Truncated ES (truncation < run): at every truncation both members of a pair start from
    the positive member's state, run theta +- eps on the next batches of the run, and the
    estimate is mean (L+ - L-) / (2 sigma^2) eps -- all recomputed here by hand."""
    sigma, T = 0.1, H // 4
    est = make(momentum_lo, quad_family, "es", T, slots=8, sigma=sigma)
    theta = momentum_lo.init(None)
    step = jax.jit(est.step)
    (s0,) = est.init(theta, jax.random.PRNGKey(0))
    _, (s1,), _ = step(theta, (s0,), jax.random.PRNGKey(1))
    # the members of a pair have diverged after one truncation: re-syncing matters now
    assert not np.allclose(s1.params["x"][:, 0], s1.params["x"][:, 1])
    grad, (s2,), diag = step(theta, (s1,), jax.random.PRNGKey(2))
    assert int(diag["finished_runs"]) == 0 and int(diag["valid_pairs"]) == 8
    eps = s2.acc  # ES keeps this truncation's perturbation as the accumulator
    (p_pos, _, l_pos), (p_neg, _, l_neg) = hand_pair(momentum_lo, quad_family, theta, eps, s1,
                                                     T, (1.0, -1.0))
    np.testing.assert_allclose(s2.params["x"][:, 0], p_pos["x"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s2.params["x"][:, 1], p_neg["x"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(s2.step), 2 * T)
    coef = (l_pos - l_neg) / (2 * sigma**2)
    expected = jax.tree.map(lambda e: jnp.mean(coef.reshape((-1,) + (1,) * (e.ndim - 1)) * e, 0),
                            eps)
    np.testing.assert_allclose(flat(grad), flat(expected), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("estimator", ["es", "pes"])
def test_non_antithetic_estimate_by_hand(momentum_lo, quad_family, estimator):
    """Without antithetic pairs: one particle theta + eps per slot and the estimate
    mean L+ / sigma^2 * A (A = eps for ES, the run's summed perturbations for PES)."""
    sigma, T = 0.1, H // 4
    est = make(momentum_lo, quad_family, estimator, T, slots=8, sigma=sigma, antithetic=False)
    assert est.config.num_particles == 1
    theta = momentum_lo.init(None)
    step = jax.jit(est.step)
    (s0,) = est.init(theta, jax.random.PRNGKey(0))
    _, (s1,), _ = step(theta, (s0,), jax.random.PRNGKey(1))
    grad, (s2,), _ = step(theta, (s1,), jax.random.PRNGKey(2))
    eps = s2.acc if estimator == "es" else jax.tree.map(jnp.subtract, s2.acc, s1.acc)
    ((p_pos, _, l_pos),) = hand_pair(momentum_lo, quad_family, theta, eps, s1, T, (1.0,))
    np.testing.assert_allclose(s2.params["x"][:, 0], p_pos["x"], rtol=1e-6, atol=1e-7)
    coef = l_pos / sigma**2
    expected = jax.tree.map(lambda a: jnp.mean(coef.reshape((-1,) + (1,) * (a.ndim - 1)) * a, 0),
                            s2.acc)
    np.testing.assert_allclose(flat(grad), flat(expected), rtol=1e-4)
    assert np.all(flat(grad) != 0)


def exact_truncation_grad(lo, family, theta, state, length):
    """Exact gradient of the mean over slots of one truncation's meta-loss, from each slot's
    current state (particle 0), the state held fixed: the truncated objective."""
    take = lambda x: x[:, 0]

    def mean_loss(th):
        run = lambda cfg, p, s, k, t0: hand_truncation(lo, family, th, cfg, p, s, k, t0, length)
        losses = jax.vmap(run)(state.cfg, jax.tree.map(take, state.params),
                               jax.tree.map(take, state.opt_state), state.key, state.step)[2]
        return jnp.mean(losses)

    return jax.jit(jax.grad(mean_loss))(theta)


def test_truncated_es_estimates_the_truncated_gradient(momentum_lo, quad_family):
    """Truncated ES in the middle of runs estimates the exact gradient of the truncation's
    meta-loss from the pairs' common (re-synced) start state."""
    T = H // 4
    est = make(momentum_lo, quad_family, "es", T)
    theta = momentum_lo.init(None)
    step = jax.jit(est.step)
    (s0,) = est.init(theta, jax.random.PRNGKey(0))
    _, (s1,), _ = step(theta, (s0,), jax.random.PRNGKey(1))
    grad, _, _ = step(theta, (s1,), jax.random.PRNGKey(2))
    assert rel_err(grad, exact_truncation_grad(momentum_lo, quad_family, theta, s1, T)) < 0.15


NON_ANTITHETIC = dict(sigma=0.2, slots=16384)  # L+/sigma^2 eps is noisy: a large sigma and
# many slots (smoothing bias at sigma 0.2 measured ~2% with antithetic ES; noise ~0.1)


def test_non_antithetic_es_is_unbiased(momentum_lo, quad_family):
    est = make(momentum_lo, quad_family, "es", H, antithetic=False, **NON_ANTITHETIC)
    theta = momentum_lo.init(None)
    (state,) = est.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state)
    grad, _, _ = jax.jit(est.step)(theta, (state,), jax.random.PRNGKey(1))
    assert rel_err(grad, exact) < 0.3


def test_non_antithetic_pes_over_truncations_is_unbiased(momentum_lo, quad_family):
    est = make(momentum_lo, quad_family, "pes", H // 4, antithetic=False, **NON_ANTITHETIC)
    theta = momentum_lo.init(None)
    (state,) = est.init(theta, jax.random.PRNGKey(0))
    exact = exact_meta_grad(momentum_lo, quad_family, theta, state)
    step = jax.jit(est.step)
    grads = []
    for i in range(4):
        g, (state,), _ = step(theta, (state,), jax.random.PRNGKey(10 + i))
        grads.append(flat(g))
    pes = np.mean(grads, axis=0)
    assert np.linalg.norm(pes - flat(exact)) / np.linalg.norm(flat(exact)) < 0.3


@dataclasses.dataclass(frozen=True)
class StiffQuadraticFamily(QuadraticFamily):
    """Half the tasks have curvature 1e6: the momentum LO's iterates overflow on them within a
    run, and so do the gradients of their meta-losses (a merely huge loss is clipped by the
    normalizer and has a zero, finite gradient)."""

    name: str = "stiff_quadratic"

    def sample(self, key):
        k1, k2 = jax.random.split(key)
        h = jax.random.uniform(k1, (self.dim,), minval=0.5, maxval=2.0)
        return {"h": jnp.where(jax.random.uniform(k2) < 0.5, h, 1e6)}


def test_estimate_is_the_mean_over_valid_slots_only(momentum_lo):
    """Dropped (non-finite) contributions are excluded from the mean, not counted as zeros:
    TBPTT over whole runs equals the mean of the exact per-slot gradients that are finite."""
    family = StiffQuadraticFamily()
    slots = 16
    est = make(momentum_lo, family, "tbptt", H, slots=slots)
    theta = momentum_lo.init(None)
    (state,) = est.init(theta, jax.random.PRNGKey(0))
    per_slot = jax.vmap(
        lambda cfg, p, s, k: jax.grad(
            lambda th: hand_truncation(momentum_lo, family, th, cfg, p, s, k, 0, H)[2]
        )(theta)
    )(state.cfg, jax.tree.map(lambda x: x[:, 0], state.params),
      jax.tree.map(lambda x: x[:, 0], state.opt_state), state.key)
    per_slot = np.stack([np.asarray(x) for x in jax.tree.leaves(per_slot)], axis=1)
    finite = np.all(np.isfinite(per_slot), axis=1)
    assert 0 < finite.sum() < slots  # some slots really are dropped
    grad, _, diag = jax.jit(est.step)(theta, (state,), jax.random.PRNGKey(1))
    assert int(diag["valid_pairs"]) == finite.sum()
    assert int(diag["dropped_pairs"]) == slots - finite.sum()
    np.testing.assert_allclose(flat(grad), per_slot[finite].mean(0), rtol=1e-4, atol=1e-7)
