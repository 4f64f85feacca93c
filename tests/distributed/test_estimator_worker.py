"""The worker and the learner's update, in-process (no Ray): exact pooling and keys."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

from lopt.distributed.worker import EstimatorWorker, WorkerSpec, worker_keys
from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.trainer import MetaTrainer

CFG = dict(
    tasks="quadratic", truncation=4, horizon_min=8, horizon_max=16, num_slots=6,
    outer_lr=0.05, outer_steps=5, eval_every=0, checkpoint_every=10, seed=7,
)


def make_worker(trainer, theta, *, slots, incarnation=0, index=0):
    init_key, loop_key = worker_keys(trainer.key_est, trainer.key_loop, incarnation)
    est_cfg = dataclasses.replace(trainer.config.estimator_config(), num_slots=slots)
    spec = WorkerSpec(index, incarnation, trainer.optimizer, trainer.task, est_cfg, 1,
                      init_key, loop_key)
    return EstimatorWorker(spec, jax.device_get(theta))


@pytest.mark.slow  # compiles the fused step, a worker step and the update (7-9 s)
def test_worker_plus_learner_update_is_the_single_process_step(tmp_path, momentum_lo,
                                                                quad_family):
    """The split (worker estimate on one side, learner update on the other) computes the very
    numbers of the fused single-process step: the same keys, slots and float operations."""
    t = MetaTrainer(MetaTrainConfig(**CFG), tmp_path / "a", optimizer=momentum_lo,
                    task=quad_family, save_theta=lambda *a: None)
    reference = t.run()["theta"]
    state = t.init_state()
    worker = make_worker(t, state["theta"], slots=6)
    theta, opt_state = state["theta"], state["opt_state"]
    for version in range(5):
        est = worker.estimate(jax.device_get(theta), version)
        assert est["version"] == version and est["count"] == version
        assert est["inner_steps"] == 6 * 4 * 2
        theta, opt_state, _, skipped = t.apply_estimate(theta, opt_state, est["grad_sum"],
                                                        est["valid_pairs"])
        assert not skipped
    for k in reference:
        np.testing.assert_array_equal(np.asarray(theta[k]), np.asarray(reference[k]))


@pytest.mark.slow  # compiles the fused step, a worker step and the update (7-9 s)
def test_pooled_update_uses_mean_over_all_valid_pairs(tmp_path, momentum_lo, quad_family):
    """Two workers' sums pooled = the valid-weighted mean of their own mean gradients."""
    t = MetaTrainer(MetaTrainConfig(**{**CFG, "clip_norm": 0.0}), tmp_path / "b",
                    optimizer=momentum_lo, task=quad_family, save_theta=lambda *a: None)
    state = t.init_state()
    host = jax.device_get(state["theta"])
    a = make_worker(t, state["theta"], slots=4, incarnation=0).estimate(host, 0)
    b = make_worker(t, state["theta"], slots=2, incarnation=1, index=1).estimate(host, 0)
    assert a["valid_pairs"] == 4 and b["valid_pairs"] == 2
    pooled = jax.tree.map(np.add, a["grad_sum"], b["grad_sum"])
    theta, _, grad_norm, _ = t.apply_estimate(state["theta"], state["opt_state"], pooled, 6)
    # by hand: mean over the 6 pairs, then Adam's first step moves each coordinate by -lr*sign
    mean = {k: (4 * (a["grad_sum"][k] / 4) + 2 * (b["grad_sum"][k] / 2)) / 6 for k in host}
    np.testing.assert_allclose(float(grad_norm),
                               np.sqrt(sum(float(v) ** 2 for v in mean.values())), rtol=1e-6)
    for k in host:
        np.testing.assert_allclose(float(theta[k]), host[k] - 0.05 * np.sign(mean[k]),
                                   rtol=1e-5)


def test_incarnations_get_distinct_keys(tmp_path, momentum_lo, quad_family):
    t = MetaTrainer(MetaTrainConfig(**CFG), tmp_path / "c", optimizer=momentum_lo,
                    task=quad_family, save_theta=lambda *a: None)
    first = worker_keys(t.key_est, t.key_loop, 0)
    np.testing.assert_array_equal(first[0], np.asarray(t.key_est))  # the single-process keys
    np.testing.assert_array_equal(first[1], np.asarray(t.key_loop))
    keys = [tuple(np.concatenate(worker_keys(t.key_est, t.key_loop, i))) for i in range(6)]
    assert len(set(keys)) == 6


def test_workers_on_a_node_claim_distinct_cores_until_they_exit(tmp_path):
    from lopt.distributed.worker import claim_cores

    def close(claim):
        for fd in claim[1]:
            os.close(fd)

    a = claim_cores(1, {0, 1, 2}, str(tmp_path))
    b = claim_cores(2, {0, 1, 2}, str(tmp_path))
    assert a[0] == [0] and b[0] == [1, 2]
    assert claim_cores(1, {0, 1, 2}, str(tmp_path)) is None  # every core is held
    close(a)  # a worker exits (its descriptors close): its core is free again
    assert claim_cores(2, {0, 1, 2}, str(tmp_path)) is None  # only core 0 is free ...
    c = claim_cores(1, {0, 1, 2}, str(tmp_path))
    assert c[0] == [0]  # ... and the failed claim did not keep it
    close(b)
    close(c)
    d = claim_cores(3, {0, 1, 2}, str(tmp_path))
    assert d[0] == [0, 1, 2]
    close(d)
