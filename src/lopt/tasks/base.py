"""The contract every inner problem honours.

A :class:`Task` is a pure description of one training problem: everything is a jittable
function, and the (small) dataset lives on device inside the closures, so that a whole
unroll -- batch sampling included -- runs inside one ``jit``/``scan``/``vmap`` without a
host round trip.

A :class:`TaskFamily` samples task *configurations* from a key. The configuration is an
array pytree (so many of them can be vmapped together); everything that fixes array shapes
(widths, depth, batch size, dataset) is a static field of the family, a compile-time
constant. A family whose members differ in shape is a :class:`TaskMixture`: a tuple of
same-shape groups, each of which is vmapped on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Params = Any
Batch = Any
Cfg = Any


def clip_meta_loss(loss: jax.Array, bound: float) -> jax.Array:
    """Map a loss into ``[0, bound]``; non-finite values become ``bound``.

    This is the meta-loss normalizer of the spec (section 4): one diverging task must not
    dominate a meta-gradient estimate.
    """
    loss = jnp.asarray(loss, jnp.float32)
    return jnp.where(jnp.isfinite(loss), jnp.clip(loss, 0.0, bound), bound)


@dataclass(frozen=True)
class Task:
    """One inner problem as pure functions.

    Attributes:
        name: registry name (or a descriptive name for sampled tasks).
        init: ``init(key) -> params``.
        sample_batch: ``sample_batch(key) -> batch``; runs inside ``jit`` (index draws).
        loss: ``loss(params, batch) -> scalar`` training loss.
        normalizer: ``normalizer(loss) -> bounded meta-loss`` (non-finite -> bound).
        eval_loss: optional ``eval_loss(params, key) -> scalar`` held-out loss.
        eval_accuracy: optional ``eval_accuracy(params, key) -> scalar`` held-out accuracy
            (fraction correct) of classification tasks, on the same split as ``eval_loss``.
    """

    name: str
    init: Callable[[jax.Array], Params]
    sample_batch: Callable[[jax.Array], Batch]
    loss: Callable[[Params, Batch], jax.Array]
    normalizer: Callable[[jax.Array], jax.Array]
    eval_loss: Callable[[Params, jax.Array], jax.Array] | None = None
    eval_accuracy: Callable[[Params, jax.Array], jax.Array] | None = None


@runtime_checkable
class TaskFamily(Protocol):
    """Same-shape tasks indexed by an array configuration (vmappable)."""

    name: str

    def sample(self, key: jax.Array) -> Cfg:
        """Draw a configuration (an array pytree) from ``key``."""

    def task(self, cfg: Cfg) -> Task:
        """Build the task for ``cfg``; must work when ``cfg`` is traced (under vmap/jit)."""


@dataclass(frozen=True)
class FixedTaskFamily:
    """A single task seen as a family with an empty configuration."""

    base: Task

    @property
    def name(self) -> str:
        return self.base.name

    def sample(self, key: jax.Array) -> Cfg:
        del key
        return jnp.zeros((), jnp.float32)

    def task(self, cfg: Cfg) -> Task:
        del cfg
        return self.base


@dataclass(frozen=True)
class TaskMixture:
    """Tasks of different shapes: a tuple of same-shape groups with sampling weights."""

    name: str
    groups: tuple[TaskFamily, ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if not self.groups:
            raise ValueError(f"task mixture {self.name!r} has no groups")
        if self.weights is not None and len(self.weights) != len(self.groups):
            raise ValueError(
                f"task mixture {self.name!r}: {len(self.weights)} weights for "
                f"{len(self.groups)} groups"
            )


def sample_task(obj: Task | TaskFamily | TaskMixture, key: jax.Array) -> Task:
    """One concrete task from a task, family or mixture (group drawn by ``weights``).

    Used by ``lopt train`` and evaluations to turn a family name plus a seed into a task.
    """
    if isinstance(obj, Task):
        return obj
    groups = as_groups(obj)
    k_group, k_cfg = jax.random.split(key)
    weights = getattr(obj, "weights", None)
    p = None if weights is None else jnp.asarray(weights, jnp.float32) / sum(weights)
    index = int(jax.random.choice(k_group, len(groups), p=p)) if len(groups) > 1 else 0
    group = groups[index]
    return group.task(group.sample(k_cfg))


def as_groups(obj: Task | TaskFamily | TaskMixture) -> tuple[TaskFamily, ...]:
    """Normalize a task, family or mixture to a tuple of same-shape families."""
    if isinstance(obj, TaskMixture):
        return obj.groups
    if isinstance(obj, Task):
        return (FixedTaskFamily(obj),)
    if isinstance(obj, TaskFamily):
        return (obj,)
    raise TypeError(f"expected a Task, TaskFamily or TaskMixture, got {type(obj).__name__}")
