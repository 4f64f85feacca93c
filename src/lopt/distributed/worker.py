"""An estimator worker: its own task slots and inner states, one jitted estimator step per call.

:class:`EstimatorWorker` is a plain class (no Ray import), made a Ray actor by the learner
(``ray.remote(EstimatorWorker)``) and usable in-process as well. Each call of :meth:`estimate`
takes the current theta and its version, advances every slot of the worker by one truncation
(:meth:`GradientEstimator.step_sum`, jitted, vectorized over the worker's slots, sharded over
its local devices when it has several) and returns the *unnormalized* estimate -- the sum of
the valid contributions and the number of valid pairs -- tagged with the theta version and the
diagnostics, so the learner can pool several workers' estimates exactly.

Random numbers: a worker *incarnation* (every creation, re-creations included, gets a new
number from the learner) owns an init key and a loop key; its ``k``-th estimate uses
``fold_in(loop_key, k)``. Incarnation 0 uses the single-process run's keys, so one worker that
always computes on the current theta reproduces the single-process run exactly.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from lopt.metatrain.config import EstimatorConfig


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build its estimator (pickled to the actor).

    Attributes:
        index: the worker's position (0..workers-1); a re-created worker keeps it.
        incarnation: unique number of this creation; picks the random keys.
        optimizer, task: the learned optimizer and the task (family or mixture) objects.
        estimator: the estimator config with *this worker's* ``num_slots``.
        scan_unroll: ``lax.scan`` unroll factor of the inner loop.
        init_key, loop_key: ``uint32[2]`` keys (see :func:`worker_keys`).
        cpus: cores reserved for the worker (see :func:`limit_threads`).
        compile_cache_dir: JAX persistent compilation cache directory, or None.
    """

    index: int
    incarnation: int
    optimizer: Any
    task: Any
    estimator: EstimatorConfig
    scan_unroll: int
    init_key: np.ndarray
    loop_key: np.ndarray
    cpus: int = 1
    compile_cache_dir: str | None = None


def worker_keys(key_est, key_loop, incarnation: int) -> tuple[np.ndarray, np.ndarray]:
    """``(init_key, loop_key)`` of a worker incarnation.

    Incarnation 0 gets the single-process run's estimator and loop keys; every other one a pair
    derived from ``fold_in(key_est, incarnation)``, so re-created workers get fresh slots and
    fresh data instead of repeating a predecessor's.
    """
    import jax

    if incarnation == 0:
        return np.asarray(key_est), np.asarray(key_loop)
    init_key, loop_key = jax.random.split(jax.random.fold_in(key_est, incarnation))
    return np.asarray(init_key), np.asarray(loop_key)


def limit_threads(cpus: int) -> bool:
    """Make this process's XLA use ``cpus`` cores; call before JAX starts its backends.

    One core: XLA's CPU client is told to run single-threaded Eigen kernels
    (``--xla_cpu_multi_thread_eigen=false``) and the process is pinned to one core of those it
    may use (chosen by pid, so workers on one node spread out). Several cores: XLA gets that
    many host devices (``--xla_force_host_platform_device_count``) and the estimator shards its
    slots over them. Returns whether the XLA flags took effect (not when JAX had already
    started, or ``XLA_FLAGS`` already names the setting).
    """
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if cpus > 1:
        if "xla_force_host_platform_device_count" in flags:
            return False
        flags = f"{flags} --xla_force_host_platform_device_count={cpus}"
    else:
        if "xla_cpu_multi_thread_eigen" in flags:
            return False
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags.strip()
    return True


class EstimatorWorker:
    """A worker's slots, inner states and compiled estimator step (see the module docstring).

    Args:
        spec: :class:`WorkerSpec`.
        theta: the current meta-parameters (numpy or JAX pytree); the slots' optimizer states
            are initialized with it.

    The estimator step is compiled in the constructor, so an actor is ready to estimate at
    full speed once :meth:`ready` answers.
    """

    def __init__(self, spec: WorkerSpec, theta):
        t0 = time.perf_counter()
        limit_threads(spec.cpus)
        import jax

        if spec.compile_cache_dir:
            jax.config.update("jax_compilation_cache_dir", spec.compile_cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

        from lopt.metatrain.estimators import make_estimator
        from lopt.metatrain.trainer import slot_sharding

        self.spec = spec
        self.estimator = make_estimator(
            spec.optimizer, spec.task, spec.estimator, scan_unroll=spec.scan_unroll
        )
        self._loop_key = jax.numpy.asarray(spec.loop_key)
        theta = jax.tree.map(jax.numpy.asarray, theta)
        state = self.estimator.init(theta, jax.numpy.asarray(spec.init_key))
        est_sh, rep = slot_sharding(state)
        if est_sh is None:
            step = jax.jit(self.estimator.step_sum, donate_argnums=(1,))
        else:
            step = jax.jit(
                self.estimator.step_sum,
                donate_argnums=(1,),
                in_shardings=(rep, est_sh, rep),
                out_shardings=(rep, est_sh, rep),
            )
            state = jax.device_put(state, est_sh)
        key = jax.random.fold_in(self._loop_key, 0)
        self._step = step.lower(theta, state, key).compile()
        self._state = state
        self._count = 0
        self.startup_s = time.perf_counter() - t0

    def ready(self) -> dict:
        """Facts about the started worker (answers once the constructor has finished)."""
        import jax

        return {
            "worker": self.spec.index,
            "incarnation": self.spec.incarnation,
            "pid": os.getpid(),
            "devices": jax.local_device_count(),
            "slots": self.spec.estimator.num_slots,
            "startup_s": self.startup_s,
        }

    def estimate(self, theta, version: int) -> dict:
        """Advance every slot by one truncation with ``theta``; the tagged unnormalized estimate.

        Returns a dict of host values: ``worker, incarnation, count`` (this incarnation's
        estimate number), ``version`` (echoed), ``grad_sum`` (theta-shaped numpy pytree),
        ``valid_pairs, meta_loss_sum, nonfinite_pairs, dropped_pairs, finished_runs``,
        ``slots``, ``inner_steps`` and ``compute_s`` (wall time of this call).
        """
        import jax

        t0 = time.perf_counter()
        key = jax.random.fold_in(self._loop_key, self._count)
        grad_sum, self._state, totals = self._step(theta, self._state, key)
        grad_sum, totals = jax.device_get((grad_sum, totals))
        self._count += 1
        return {
            "worker": self.spec.index,
            "incarnation": self.spec.incarnation,
            "count": self._count - 1,
            "version": int(version),
            "grad_sum": grad_sum,
            "valid_pairs": int(totals["valid_pairs"]),
            "meta_loss_sum": float(totals["meta_loss"]),
            "nonfinite_pairs": int(totals["nonfinite_pairs"]),
            "dropped_pairs": int(totals["dropped_pairs"]),
            "finished_runs": int(totals["finished_runs"]),
            "slots": self.spec.estimator.num_slots,
            "inner_steps": self.estimator.inner_steps_per_step,
            "compute_s": time.perf_counter() - t0,
        }
