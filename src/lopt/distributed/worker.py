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
        cpus: cores reserved for the worker (see :func:`use_cores`).
        pin: whether the worker pins itself to ``cpus`` free cores of its node.
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
    pin: bool = True
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


def claim_cores(n: int, allowed, lock_dir: str) -> tuple[list[int], list[int]] | None:
    """Claim ``n`` of the ``allowed`` cores that no other worker on this node holds.

    A claim is an exclusive ``flock`` on ``lock_dir/lopt-core-<i>.lock``, held as long as the
    returned file descriptors stay open -- so the operating system releases the cores of a
    worker that dies, however it dies. Returns ``(cores, fds)``, or ``None`` (nothing held)
    when fewer than ``n`` cores are free.
    """
    import fcntl

    cores, fds = [], []
    for core in sorted(allowed):
        fd = os.open(os.path.join(lock_dir, f"lopt-core-{core}.lock"), os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        cores.append(core)
        fds.append(fd)
        if len(cores) == n:
            return cores, fds
    for fd in fds:
        os.close(fd)
    return None


def use_cores(cpus: int, pin: bool = True) -> tuple[list[int], list[int]]:
    """Make this process's XLA compute on ``cpus`` cores; call before JAX starts its backends.

    XLA's CPU client runs one program's independent work on as many threads as the process
    may use cores (measured here: a worker's PES step busy on two threads of a 2-core machine,
    with or without ``--xla_cpu_multi_thread_eigen=false``), so a worker is limited by *CPU
    affinity*: it claims ``cpus`` free cores of its node (:func:`claim_cores`) and pins itself
    to them (pinned: one busy thread, 20% less CPU time per estimate than unpinned). With
    ``cpus > 1`` XLA also gets that many host devices and the estimator shards its slots over
    them. Returns ``(pinned cores, lock fds to keep open)``; ``([], [])`` when no pinning was
    possible or needed (``pin`` off, all cores free for this worker, no free cores left, or a
    platform without ``sched_setaffinity``).
    """
    import tempfile

    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return [], []
    flags = os.environ.get("XLA_FLAGS", "")
    if cpus > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpus}"
    if not pin or not hasattr(os, "sched_setaffinity"):
        return [], []
    allowed = os.sched_getaffinity(0)
    if cpus >= len(allowed):
        return [], []
    claim = claim_cores(cpus, allowed, tempfile.gettempdir())
    if claim is None:
        return [], []
    os.sched_setaffinity(0, claim[0])
    return claim


def _usable_dir(path: str) -> bool:
    """Create ``path`` if missing; False where that is not possible (then run without it)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


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
        self.cores, self._core_locks = use_cores(spec.cpus, spec.pin)
        import jax

        if spec.compile_cache_dir and _usable_dir(spec.compile_cache_dir):
            jax.config.update("jax_compilation_cache_dir", spec.compile_cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

        from lopt.metatrain.estimators import make_estimator
        from lopt.metatrain.trainer import slot_sharding
        from lopt.utils.compile import optimizer_jit

        self.spec = spec
        self.estimator = make_estimator(
            spec.optimizer, spec.task, spec.estimator, scan_unroll=spec.scan_unroll
        )
        self._loop_key = jax.numpy.asarray(spec.loop_key)
        theta = jax.tree.map(jax.numpy.asarray, theta)
        # lopt's jit (the local engine's and the optimizer's compile options, the persistent
        # cache); the slots' initialization in one compiled program, as the single-process
        # trainer does it
        jit = optimizer_jit(
            spec.optimizer, differentiated=spec.estimator.differentiates_optimizer
        )
        state = jit(self.estimator.init)(theta, jax.numpy.asarray(spec.init_key))
        est_sh, rep = slot_sharding(state)
        if est_sh is None:
            step = jit(self.estimator.step_sum, donate_argnums=(1,))
        else:
            step = jit(
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
            "cores": self.cores,
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
