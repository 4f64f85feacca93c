"""How a meta-training run is spread over Ray workers: one frozen, validated dataclass.

It says *how* the run is computed, not *what* is meta-trained (that is
:class:`~lopt.metatrain.MetaTrainConfig`), so it is not part of the resume check: a run may be
resumed with a different number of workers.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Ray workers and how the learner pools their estimates.

    Attributes:
        workers: estimator worker actors. The run's ``num_slots`` is the *total*, split over
            the workers (so 1 worker holds every slot, 2 workers half each).
        staleness: largest accepted staleness of an estimate, in outer steps (the number of
            updates applied between the theta an estimate was computed with and the update it
            would enter). Older estimates are dropped and counted. ``0`` is synchronous: every
            worker computes on the current theta and waits for the update.
        estimates_per_step: fresh estimates pooled into one outer step (default: ``workers``).
            With ``staleness = 0`` at most ``workers`` (a worker contributes at most one
            estimate per theta then).
        cpus_per_worker: CPU cores each worker reserves; its XLA sees that many host devices
            and shards its slots over them.
        pin_cores: pin each worker to ``cpus_per_worker`` cores of its node that no other
            worker holds (XLA otherwise spreads a worker over every core it may use). Turn it
            off on nodes shared with other heavy work, where a pinned worker cannot move away
            from a busy core.
        max_restarts: re-creations allowed per worker before the run gives up.
        address: Ray cluster to join (``ray.init(address)``); ``None`` starts a local instance
            sized to the machine.
        start_timeout_s: how long to wait for the workers to start (build and compile) before
            failing with an explanation (e.g. a cluster without enough free CPUs).
        compile_cache_dir: a JAX persistent compilation cache for the workers (a node-local
            path). ``None``: lopt's own cache (``$LOPT_CACHE/jax``, see
            :mod:`lopt.utils.compile`; off with ``LOPT_NO_COMPILE_CACHE=1``). Workers on one
            node, re-created workers and later runs then load their compiled programs instead
            of compiling again (measured for a small worker on this machine: build and compile
            6.7 s without, 1.3 s with a warm cache). Keep it node-local: XLA compiles for the
            node's CPU.
    """

    workers: int
    staleness: int = 0
    estimates_per_step: int | None = None
    cpus_per_worker: int = 1
    pin_cores: bool = True
    max_restarts: int = 3
    address: str | None = None
    start_timeout_s: float = 600.0
    compile_cache_dir: str | None = None

    def __post_init__(self):
        for name in ("workers", "cpus_per_worker"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("staleness", "max_restarts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        k = self.estimates_per_step
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"estimates_per_step must be a positive integer, got {k!r}")
        if self.staleness == 0 and self.per_step > self.workers:
            raise ValueError(
                f"with staleness 0 every worker gives at most one estimate per outer step, so "
                f"estimates_per_step ({self.per_step}) cannot exceed workers ({self.workers})"
            )
        if not self.start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")

    @property
    def per_step(self) -> int:
        """Fresh estimates pooled into one outer step."""
        return self.estimates_per_step or self.workers

    def worker_slots(self, num_slots: int) -> tuple[int, ...]:
        """``num_slots`` split over the workers as evenly as possible (first ones get more)."""
        if num_slots < self.workers:
            raise ValueError(
                f"{self.workers} workers need at least as many task slots, got num_slots="
                f"{num_slots}; raise --num-slots (the total over all workers) or lower --workers"
            )
        base, rest = divmod(num_slots, self.workers)
        return tuple(base + (i < rest) for i in range(self.workers))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
