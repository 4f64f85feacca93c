"""The learner's side of distributed meta-training: estimates from Ray worker actors.

:class:`RayEstimates` is an :class:`~lopt.metatrain.trainer.EstimateSource`: the
:class:`~lopt.metatrain.MetaTrainer` keeps doing the outer update, evaluation, best-theta
selection, checkpoints, metrics and resume; this class only decides which worker estimates make
up an outer step.

One outer step, precisely. The learner holds theta *version* ``v`` (= outer steps applied).
Every worker is always computing one estimate on the theta version it was handed. Arrivals are
taken in completion order; an arrival computed on version ``u`` has *staleness* ``v - u``:

* staleness > ``staleness`` bound: dropped (counted as ``stale_dropped``), the worker is handed
  the current theta;
* otherwise accepted. With a bound > 0 the worker is handed the current theta at once (it keeps
  working while the step fills up); with bound 0 it waits for the update, so every worker
  computes on the current theta and the run is synchronous.

When ``estimates_per_step`` (``K``, default: every worker) estimates are accepted, they are
pooled exactly as one estimator over all their slots would pool its slots (summed
contributions over summed valid pairs, in worker order), the trainer applies the outer update,
``v`` becomes ``v + 1`` and the waiting workers get the new theta. So with ``K = workers`` and
bound 0 an outer step averages one estimate of every worker, all computed on the current theta:
the single-process estimator with the same total slots, split over machines.

A worker whose actor dies (``RayActorError``: killed, its process or node lost) is re-created
with the same index and slot count but a new incarnation, i.e. fresh task slots and fresh keys
(:func:`~lopt.distributed.worker.worker_keys`); its in-flight estimate is lost (counted). The run
goes on with the others and finishes every outer step. ``--resume`` re-creates all workers
(new incarnations: the checkpoint stores how many were used, not the workers' slots).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings

import numpy as np

from lopt.distributed.config import DistributedConfig
from lopt.distributed.worker import EstimatorWorker, WorkerSpec, worker_keys


def require_ray():
    """Import Ray or explain how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "distributed meta-training needs Ray: pip install -e '.[distributed]' "
            "(or pip install 'ray[default]')"
        ) from None
    return ray


def connect(config: DistributedConfig) -> bool:
    """Join ``config.address`` or start a local Ray instance; True if this call started Ray.

    A Ray already initialized in this process (e.g. by a test fixture or a notebook) is used
    as it is. A local instance is sized to the machine (``os.cpu_count()`` CPUs).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    with warnings.catch_warnings():
        # Ray starts its processes with subprocess (fork + exec at once), which JAX's warning
        # about os.fork in a multithreaded process does not concern
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        if config.address:
            ray.init(address=config.address, logging_level="warning")
        else:
            check_fits_locally(config)
            ray.init(
                num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="warning"
            )
    return True


def check_fits_locally(config: DistributedConfig) -> None:
    """Without a cluster address every worker's cores must exist on this machine (else the
    actors would wait for resources forever)."""
    needed = config.workers * config.cpus_per_worker
    cores = os.cpu_count() or 1
    if config.address is None and needed > cores:
        raise ValueError(
            f"{config.workers} workers x {config.cpus_per_worker} CPUs need {needed} cores, "
            f"this machine has {cores}; lower --workers or join a cluster with --ray-address"
        )


def worker_lost_errors(ray) -> tuple[type, ...]:
    """The errors of an estimate whose worker is gone (killed, crashed, node lost)."""
    lost = (ray.exceptions.RayActorError,)
    unavailable = getattr(ray.exceptions, "ActorUnavailableError", None)  # newer Ray only
    return lost + ((unavailable,) if unavailable is not None else ())


@dataclasses.dataclass
class _Worker:
    """The learner's record of one worker position."""

    index: int
    slots: int
    handle: object = None
    incarnation: int = -1
    restarts: int = 0


@dataclasses.dataclass
class _StepLog:
    """What happened while one outer step filled up."""

    accepted: list = dataclasses.field(default_factory=list)
    stale_dropped: int = 0
    lost: int = 0
    restarted: list = dataclasses.field(default_factory=list)
    arrivals: list = dataclasses.field(default_factory=list)
    waited_s: float = 0.0


class RayEstimates:
    """Estimates from ``config.workers`` Ray actors (see the module docstring).

    Args:
        config: :class:`DistributedConfig`.
        worker_class: the actor's class (default :class:`EstimatorWorker`; a subclass may add
            behaviour, e.g. a deliberately slow worker in a test).
    """

    donates_state = False

    def __init__(self, config: DistributedConfig, *, worker_class=EstimatorWorker):
        self.config = config
        self.worker_class = worker_class
        self.workers: list[_Worker] = []
        self._pending: dict = {}  # object ref -> worker
        self._owns_ray = False
        self._next_incarnation = 0
        self._actor_cls = None
        self._trainer = None
        #: what each first-created worker reported when it had started (``EstimatorWorker.ready``)
        self.started: list[dict] = []

    # -- EstimateSource -------------------------------------------------------------------
    def init_state(self, trainer, theta, key_est, eval_keys):
        return {}, None  # the slots live on the workers; the trainer draws the held-out tasks

    def start(self, trainer, state, outer_step, saved):
        import jax

        ray = require_ray()
        slots = self.config.worker_slots(trainer.config.num_slots)
        self._trainer = trainer
        self._owns_ray = connect(self.config)
        self._next_incarnation = int((saved or {}).get("incarnations", 0))
        self._actor_cls = ray.remote(self.worker_class).options(
            num_cpus=self.config.cpus_per_worker, max_restarts=0
        )
        self.version = outer_step
        self._publish(jax.device_get(state["theta"]))
        self.workers = [_Worker(i, n) for i, n in enumerate(slots)]
        for w in self.workers:
            self._spawn(w)
        refs = [w.handle.ready.remote() for w in self.workers]
        try:
            self.started = ray.get(refs, timeout=self.config.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"the {len(refs)} workers did not start within {self.config.start_timeout_s} s: "
                f"does the cluster have {len(refs) * self.config.cpus_per_worker} free CPUs "
                "and lopt installed on every node?"
            ) from None
        for w in self.workers:
            self._submit(w)
        return state

    def step(self, trainer, state, outer_step):
        import jax

        ray = require_ray()
        if outer_step != self.version:
            raise RuntimeError(f"learner at theta version {self.version}, asked for {outer_step}")
        t0 = time.perf_counter()
        log = _StepLog()
        held = []  # accepted workers waiting for the update (staleness bound 0)
        while len(log.accepted) < self.config.per_step:
            if not self._pending:  # cannot happen with a valid config; never wait forever
                raise RuntimeError("no worker is computing, but the outer step is not full")
            tw = time.perf_counter()
            (ref,), _ = ray.wait(list(self._pending), num_returns=1)
            log.waited_s += time.perf_counter() - tw
            w = self._pending.pop(ref)
            try:
                est = ray.get(ref)
            except worker_lost_errors(ray):
                log.lost += 1
                self._restart(w)
                log.restarted.append(w.index)
                self._submit(w)
                continue
            staleness = self.version - est["version"]
            applied = staleness <= self.config.staleness
            log.arrivals.append(
                {
                    "worker": w.index,
                    "incarnation": est["incarnation"],
                    "version": est["version"],
                    "staleness": staleness,
                    "applied": applied,
                    "inner_steps_per_s": round(est["inner_steps"] / est["compute_s"], 1),
                }
            )
            if not applied:
                log.stale_dropped += 1
                self._submit(w)
                continue
            log.accepted.append(est)
            if self.config.staleness > 0:
                self._submit(w)
            else:
                held.append(w)
        ests = sorted(log.accepted, key=lambda e: (e["worker"], e["incarnation"], e["count"]))
        grad_sum = functools.reduce(
            lambda a, b: jax.tree.map(np.add, a, b), [e["grad_sum"] for e in ests]
        )
        valid = sum(e["valid_pairs"] for e in ests)
        theta, opt_state, grad_norm, skipped = trainer.apply_estimate(
            state["theta"], state["opt_state"], grad_sum, valid
        )
        self.version += 1
        self._publish(jax.device_get(theta))
        for w in held:
            self._submit(w)
        learner_s = time.perf_counter() - t0 - log.waited_s
        staleness = [a["staleness"] for a in log.arrivals if a["applied"]]
        diag = {
            "meta_loss": sum(e["meta_loss_sum"] for e in ests) / sum(e["slots"] for e in ests),
            "grad_norm": float(grad_norm),
            "nonfinite_pairs": sum(e["nonfinite_pairs"] for e in ests),
            "dropped_pairs": sum(e["dropped_pairs"] for e in ests),
            "finished_runs": sum(e["finished_runs"] for e in ests),
            "skipped_update": bool(skipped),
            "inner_steps": sum(e["inner_steps"] for e in ests),
            "extra": {
                "estimates": len(ests),
                "staleness_max": max(staleness),
                "stale_dropped": log.stale_dropped,
                "lost_estimates": log.lost,
                "worker_restarts": len(log.restarted),
                "learner_ms_per_estimate": 1e3 * learner_s / len(ests),
                "wait_s": log.waited_s,
                "arrivals": log.arrivals,
                **({"restarted": log.restarted} if log.restarted else {}),
            },
        }
        return {"theta": theta, "opt_state": opt_state}, diag

    def checkpoint_meta(self) -> dict:
        return {"incarnations": self._next_incarnation}

    def describe(self) -> dict:
        return {"kind": "ray", **self.config.to_dict()}

    def close(self) -> None:
        """Stop the workers (and Ray, if this source started it)."""
        if not self.workers and not self._owns_ray:
            return
        ray = require_ray()
        for w in self.workers:
            if w.handle is not None:
                ray.kill(w.handle)
                w.handle = None
        self._pending.clear()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    # -- workers ----------------------------------------------------------------------------
    def _publish(self, theta_host) -> None:
        """Put the current theta into the object store once; every worker call reads it."""
        ray = require_ray()
        self._theta_ref = ray.put(theta_host)

    def _spawn(self, w: _Worker) -> None:
        trainer = self._trainer
        inc = self._next_incarnation
        self._next_incarnation += 1
        init_key, loop_key = worker_keys(trainer.key_est, trainer.key_loop, inc)
        spec = WorkerSpec(
            index=w.index,
            incarnation=inc,
            optimizer=trainer.optimizer,
            task=trainer.task,
            estimator=dataclasses.replace(trainer.config.estimator_config(), num_slots=w.slots),
            scan_unroll=trainer.scan_unroll,
            init_key=init_key,
            loop_key=loop_key,
            cpus=self.config.cpus_per_worker,
            pin=self.config.pin_cores,
            compile_cache_dir=self.config.compile_cache_dir,
        )
        w.handle = self._actor_cls.remote(spec, self._theta_ref)
        w.incarnation = inc

    def _restart(self, w: _Worker) -> None:
        ray = require_ray()
        w.restarts += 1
        if w.restarts > self.config.max_restarts:
            raise RuntimeError(
                f"worker {w.index} died {w.restarts} times (max_restarts="
                f"{self.config.max_restarts}); see the Ray logs (/tmp/ray/session_latest/logs)"
            )
        try:
            ray.kill(w.handle)  # make sure the old actor is gone
        except Exception:  # already gone is fine
            pass
        self._spawn(w)

    def _submit(self, w: _Worker) -> None:
        ref = w.handle.estimate.remote(self._theta_ref, self.version)
        self._pending[ref] = w
