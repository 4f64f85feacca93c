"""Meta-training with Ray workers on a local Ray instance (2 CPUs, one per worker).

Oracles come from outside the distributed code: the single-process engine's theta (exact
equality where the semantics say the runs are the same computation), its held-out evaluation,
and the run's own files.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from lopt.distributed import DistributedConfig, EstimatorWorker, RayEstimates
from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.trainer import MetaTrainer

pytest.importorskip("ray")
# each test starts Ray workers that compile their estimator (4-11 s each on 2 cores): slow,
# run by CI (.ci/run) and by `pytest -m slow tests/distributed`
pytestmark = pytest.mark.slow

BASE = dict(
    tasks="quadratic", estimator="pes", sigma=0.01, truncation=4, horizon_min=8,
    horizon_max=16, num_slots=8, outer_lr=0.05, outer_steps=6, eval_every=3, eval_tasks=4,
    eval_horizon=12, checkpoint_every=2, seed=3,
)


@pytest.fixture
def workers(ray_local, tmp_path_factory):
    """``workers(n, **kw)``: a DistributedConfig whose workers share one compilation cache for
    the session, so that later tests' workers start faster."""
    cache = str(tmp_path_factory.getbasetemp() / "jax_cache")
    return lambda n, **kw: DistributedConfig(workers=n, compile_cache_dir=cache, **kw)


def run(tmp_path, name, lo, fam, dist=None, callback=None, resume=False, **kw):
    cfg = MetaTrainConfig(**{**BASE, **kw})
    source = RayEstimates(dist) if isinstance(dist, DistributedConfig) else dist
    trainer = MetaTrainer(cfg, tmp_path / name, optimizer=lo, task=fam,
                          save_theta=lambda *a: None, source=source)
    return trainer.run(callback=callback, resume=resume)


def rows(path, name="metrics.jsonl"):
    return [json.loads(line) for line in (path / name).read_text().splitlines()]


def assert_same_theta(a, b):
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_one_synchronous_worker_reproduces_the_single_process_run(
        ray_local, workers, tmp_path, momentum_lo, quad_family):
    single = run(tmp_path, "single", momentum_lo, quad_family)
    dist = run(tmp_path, "ray", momentum_lo, quad_family, workers(1))
    assert_same_theta(dist["theta"], single["theta"])
    assert dist["best"] == single["best"]
    a, b = rows(tmp_path / "single"), rows(tmp_path / "ray")
    assert [r["meta_loss"] for r in a] == [r["meta_loss"] for r in b]
    assert all(r["estimates"] == 1 and r["staleness_max"] == 0 for r in b)
    engine = json.loads((tmp_path / "ray" / "config.json").read_text())["engine"]
    assert engine["kind"] == "ray" and engine["workers"] == 1


def test_two_workers_learn_like_the_single_process_run(
        ray_local, workers, tmp_path, momentum_lo, quad_family):
    kw = dict(outer_steps=10, eval_every=5, checkpoint_every=10)
    run(tmp_path, "single", momentum_lo, quad_family, **kw)
    dist = run(tmp_path, "ray", momentum_lo, quad_family, workers(2), **kw)
    meta = rows(tmp_path / "ray")
    assert [r["outer_step"] for r in meta] == list(range(1, 11))
    # every step pools one estimate of each worker (4 + 4 slots), none stale
    assert all(sorted(a["worker"] for a in r["arrivals"]) == [0, 1] for r in meta)
    assert all(r["estimates"] == 2 and r["stale_dropped"] == 0 for r in meta)
    assert all(r["inner_steps_per_s"] > 0 and r["learner_ms_per_estimate"] > 0 for r in meta)
    evals = rows(tmp_path / "ray", "eval.jsonl")
    single_evals = rows(tmp_path / "single", "eval.jsonl")
    assert evals[0] == single_evals[0]  # same initial theta, same fixed held-out draws
    # lr exp(-2) with momentum is slow on this quadratic: both runs speed it up about as much
    start, end, end_single = (evals[0]["eval_loss"], evals[-1]["eval_loss"],
                              single_evals[-1]["eval_loss"])
    assert end < 0.9 * start and end_single < 0.9 * start
    assert abs(end - end_single) < 0.25 * (start - end_single)
    assert dist["best"]["eval_loss"] == min(e["eval_loss"] for e in evals)


def test_killed_worker_is_restarted_and_the_run_completes(
        ray_local, workers, tmp_path, momentum_lo, quad_family):
    source = RayEstimates(workers(2))

    def kill(step, record):
        if step == 2:
            ray_local.kill(source.workers[1].handle)

    out = run(tmp_path, "kill", momentum_lo, quad_family, source, callback=kill, outer_steps=5)
    meta = rows(tmp_path / "kill")
    assert out["outer_step"] == 5 and [r["outer_step"] for r in meta] == [1, 2, 3, 4, 5]
    assert sum(r["worker_restarts"] for r in meta) == 1
    assert [r.get("restarted") for r in meta if r["worker_restarts"]] == [[1]]
    # the re-created worker (a new incarnation: fresh slots and keys) contributes afterwards
    incarnations = {(a["worker"], a["incarnation"]) for r in meta for a in r["arrivals"]}
    assert (1, 2) in incarnations and all(r["estimates"] == 2 for r in meta)
    assert all(np.isfinite(float(v)) for v in out["theta"].values())
    # the two first workers ran on distinct cores (where cores could be claimed at all)
    cores = [c for info in source.started for c in info["cores"]]
    assert len(cores) == len(set(cores))


class SlowSecondWorker(EstimatorWorker):
    """Worker 1 takes far longer than worker 0 for every estimate."""

    def estimate(self, theta, version):
        time.sleep(1.0 if self.spec.index == 1 else 0.05)
        return super().estimate(theta, version)


def test_stale_estimates_of_a_slow_worker_are_not_applied(
        ray_local, workers, tmp_path, momentum_lo, quad_family):
    """Staleness bound 0, one estimate per step: worker 0 drives every update; worker 1's
    estimates always arrive after updates were applied and must be dropped. Then theta is
    exactly that of a single-process run with worker 0's slots (same keys, same thetas)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    kw = dict(outer_steps=24, eval_every=0)
    source = RayEstimates(workers(2, staleness=0, estimates_per_step=1),
                          worker_class=SlowSecondWorker)
    dist = run(tmp_path, "slow", momentum_lo, quad_family, source, **kw)
    meta = rows(tmp_path / "slow")
    arrivals = [a for r in meta for a in r["arrivals"]]
    dropped = [a for a in arrivals if not a["applied"]]
    assert dropped and all(a["worker"] == 1 and a["staleness"] > 0 for a in dropped)
    assert sum(r["stale_dropped"] for r in meta) == len(dropped)
    assert all(a["worker"] == 0 and a["staleness"] == 0 for a in arrivals if a["applied"])
    single = run(tmp_path, "single", momentum_lo, quad_family, num_slots=4, **kw)
    assert_same_theta(dist["theta"], single["theta"])


def test_resume_recreates_workers(workers, tmp_path, momentum_lo, quad_family):
    def stop(step, record):
        if step == 3:
            raise KeyboardInterrupt  # checkpoints, as Ctrl-C does

    dist = workers(2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "r", momentum_lo, quad_family, dist, callback=stop)
    out = run(tmp_path, "r", momentum_lo, quad_family, dist, resume=True)
    meta = rows(tmp_path / "r")
    assert out["outer_step"] == 6 and [r["outer_step"] for r in meta] == [1, 2, 3, 4, 5, 6]
    assert json.loads((tmp_path / "r" / "config.json").read_text())["resumed_at"] == [3]
    # the resumed run's workers are new incarnations (fresh slots, fresh keys)
    assert {a["incarnation"] for r in meta[:3] for a in r["arrivals"]} == {0, 1}
    assert {a["incarnation"] for r in meta[3:] for a in r["arrivals"]} == {2, 3}
    # a single-process resume of this checkpoint is refused with an explanation
    with pytest.raises(ValueError, match="different --workers setting"):
        run(tmp_path, "r", momentum_lo, quad_family, outer_steps=8, resume=True)
