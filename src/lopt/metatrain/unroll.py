"""Vectorized truncated unrolls of one same-shape task group.

A *slot* is one inner training run in progress; every slot carries ``P`` particles (2 for an
antithetic pair ``theta + eps`` / ``theta - eps``, 1 otherwise) that share the task, the
initialization and every data batch (common random numbers) but have their own parameters and
optimizer state. One truncation is a ``lax.scan`` over inner steps whose body is ``vmap``-ed over
the particles and then over the slots (truncated backprop differentiates one slot's scan and
vmaps that over the slots), so a whole estimator step is one fused XLA program.

Inner-run lengths are drawn log-uniformly and rounded to a multiple of the truncation length.
Runs therefore end exactly at truncation boundaries: the reset happens before the next
truncation, after the finished run's last losses have been credited to the perturbations that
produced them, and no per-step reset branch slows the scan down.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt.tasks.base import TaskFamily


class UnrollState(NamedTuple):
    """State of ``S`` slots of one task group (every leaf has a leading slot axis ``S``).

    Attributes:
        params: optimizee parameters, ``[S, P, ...]``.
        opt_state: optimizer states, ``[S, P, ...]``.
        cfg: task configurations, ``[S, ...]``.
        step: inner step reached in the current run, ``[S]`` int32.
        horizon: length of the current run, ``[S]`` int32 (a multiple of the truncation).
        key: per-run data key, ``[S, 2]`` uint32; batch ``t`` uses ``fold_in(key, t)``.
        acc: PES accumulator, theta-shaped with a leading ``S``: the sum of every perturbation
            this slot's current run has seen.
    """

    params: Any
    opt_state: Any
    cfg: Any
    step: jax.Array
    horizon: jax.Array
    key: jax.Array
    acc: Any


class TaskDraw(NamedTuple):
    """What a fresh run draws before theta enters (leading axis over draws when batched).

    Attributes:
        cfg: task configuration.
        params: the task's initial parameters (no particle axis).
        horizon: run length (a multiple of the truncation).
        run_key: data key; batch ``t`` uses ``fold_in(run_key, t)``.
    """

    cfg: Any
    params: Any
    horizon: jax.Array
    run_key: jax.Array


def meta_loss_of(kind: str, task, losses: jax.Array, floor: float = 1e-4) -> jax.Array:
    """Per-step meta-loss from raw losses: the task's bounded normalizer (``normalized``), or
    its logarithm (``log``, floored at ``floor``), which weighs every task by its relative
    progress (halving a loss of 0.01 counts as much as halving a loss of 1), like a speedup."""
    normalized = jax.vmap(task.normalizer)(losses)
    if kind == "log":
        return jnp.log(jnp.maximum(normalized, floor))
    return normalized


def tree_where(mask: jax.Array, new, old):
    """``where(mask, new, old)`` leafwise; ``mask`` broadcasts from the leading axes."""

    def sel(a, b):
        m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(sel, new, old)


def broadcast_leading(tree, shape: tuple[int, ...]):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, shape + jnp.shape(x)), tree)


@dataclasses.dataclass(frozen=True)
class GroupUnroll:
    """Unrolls of one :class:`TaskFamily` with one learned optimizer (static structure only)."""

    family: TaskFamily
    optimizer: Any
    truncation: int
    horizon_min: int
    horizon_max: int
    num_particles: int
    random_offsets: bool = True
    scan_unroll: int = 1
    meta_loss: str = "normalized"
    meta_loss_floor: float = 1e-4

    # -- run lengths -------------------------------------------------------------------------
    def sample_horizon(self, key: jax.Array) -> jax.Array:
        """Log-uniform in ``[horizon_min, horizon_max]``, rounded to a multiple of truncation."""
        lo, hi = jnp.log(self.horizon_min), jnp.log(self.horizon_max)
        h = jnp.exp(lo + (hi - lo) * jax.random.uniform(key))
        n = jnp.maximum(jnp.round(h / self.truncation), 1.0)
        return (n * self.truncation).astype(jnp.int32)

    # -- fresh runs --------------------------------------------------------------------------
    def draw(self, key: jax.Array) -> TaskDraw:
        """The part of a new run that does not depend on theta: task, initialization, horizon
        and data key (one ``key`` gives the same draw wherever it is made)."""
        k_cfg, k_init, k_h, k_run = jax.random.split(key, 4)
        cfg = self.family.sample(k_cfg)
        params = self.family.task(cfg).init(k_init)
        return TaskDraw(cfg, params, self.sample_horizon(k_h), k_run)

    def start(self, params, thetas_p):
        """One slot's particles at the start of a run: the drawn initialization given to each
        of the ``P`` particles, and their optimizer states (``thetas_p``: ``[P, ...]``)."""
        params = broadcast_leading(params, (self.num_particles,))
        return params, jax.vmap(self.optimizer.init_state)(thetas_p, params)

    def fresh_slot(self, key: jax.Array, thetas_p):
        """A new run: task draw, initialization, optimizer states (one per particle), horizon."""
        cfg, params, horizon, run_key = self.draw(key)
        params, opt_state = self.start(params, thetas_p)
        return cfg, params, opt_state, horizon, run_key

    def init(self, theta, key: jax.Array, num_slots: int, extra_keys: jax.Array | None = None):
        """``num_slots`` fresh runs, each at a random truncation boundary of its run.

        With ``extra_keys`` (``[M, 2]``) it returns ``(state, draws)``: also the
        :class:`TaskDraw` of each extra key (the held-out evaluation's tasks), drawn in the
        same vectorized computation as the slots' own (one copy of the task's sampling and
        initialization in the program instead of two; the same values as :meth:`draws`).
        """
        k_slots, k_off = jax.random.split(key)
        keys = jax.random.split(k_slots, num_slots)
        if extra_keys is not None:
            keys = jnp.concatenate([keys, extra_keys])
        drawn = self.draws(keys)
        cfg, params, horizon, run_key = jax.tree.map(lambda x: x[:num_slots], drawn)
        thetas = broadcast_leading(theta, (num_slots, self.num_particles))
        params, opt_state = jax.vmap(self.start)(params, thetas)
        if self.random_offsets:
            n_trunc = horizon // self.truncation
            u = jax.random.uniform(k_off, (num_slots,))
            step = (jnp.floor(u * n_trunc).astype(jnp.int32)) * self.truncation
        else:
            step = jnp.zeros((num_slots,), jnp.int32)
        acc = jax.tree.map(lambda x: jnp.zeros((num_slots,) + jnp.shape(x), jnp.float32), theta)
        state = UnrollState(params, opt_state, cfg, step, horizon, run_key, acc)
        if extra_keys is None:
            return state
        return state, jax.tree.map(lambda x: x[num_slots:], drawn)

    def draws(self, keys: jax.Array) -> TaskDraw:
        """The :class:`TaskDraw` of each key (leading axis ``M``)."""
        return jax.vmap(self.draw)(keys)

    def reset_finished(self, state: UnrollState, thetas, key: jax.Array):
        """Restart every slot whose run is finished (``step >= horizon``); zero its accumulator.

        ``thetas`` (``[S, P, ...]``) initialize the new optimizer states. The fresh runs are only
        computed when at least one slot finished (a ``lax.cond`` outside the slot ``vmap``).
        """
        done = state.step >= state.horizon
        num_slots = done.shape[0]

        def do_reset(state):
            cfg, params, opt_state, horizon, run_key = jax.vmap(self.fresh_slot)(
                jax.random.split(key, num_slots), thetas
            )
            fresh = UnrollState(
                params,
                opt_state,
                cfg,
                jnp.zeros_like(state.step),
                horizon,
                run_key,
                jax.tree.map(jnp.zeros_like, state.acc),
            )
            return tree_where(done, fresh, state)

        state = jax.lax.cond(jnp.any(done), do_reset, lambda s: s, state)
        return state, done

    # -- one truncation ----------------------------------------------------------------------
    def particles_step(self, thetas_p, params, opt_state, cfg, run_key, t):
        """Inner step ``t`` of one slot's ``P`` particles on their shared batch ``t``.

        Returns the new ``(params, opt_state)`` and the raw losses ``[P]`` at the pre-update
        parameters."""
        task = self.family.task(cfg)
        optimizer = self.optimizer

        def particle(theta, params, opt_state, batch):
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            params, opt_state = optimizer.update(theta, opt_state, grads, params, loss=loss)
            return params, opt_state, loss

        batch = task.sample_batch(jax.random.fold_in(run_key, t))
        return jax.vmap(particle, in_axes=(0, 0, 0, None))(thetas_p, params, opt_state, batch)

    def slot_unroll(self, thetas_p, params, opt_state, cfg, step0, run_key, length: int):
        """``length`` inner steps of one slot's ``P`` particles on shared batches.

        Returns the new ``(params, opt_state)`` and ``(meta_losses [length, P], finite [P])``:
        the task's normalized losses at each step's pre-update parameters, and whether every raw
        loss was finite. (Every slot at once: :meth:`slots_unroll`.)
        """

        def body(carry, t):
            params, opt_state, loss = self.particles_step(
                thetas_p, *carry, cfg, run_key, step0 + t
            )
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            body, (params, opt_state), jnp.arange(length), unroll=self.scan_unroll
        )
        finite = jnp.all(jnp.isfinite(losses), axis=0)
        meta = meta_loss_of(self.meta_loss, self.family.task(cfg), losses, self.meta_loss_floor)
        return params, opt_state, meta, finite

    def slots_unroll(self, thetas, params, opt_state, cfg, step0, run_key, length: int):
        """:meth:`slot_unroll` of every slot (leading axis ``S`` on every argument): returns
        ``(params, opt_state, meta_losses [S, length, P], finite [S, P])``.

        The same computation as ``vmap(slot_unroll)``, written as one scan whose body is
        vmapped over the slots: JAX then traces the step once, where a scan inside ``vmap``
        is traced and then batched again (seconds of start-up for a task mixture's
        meta-training step and evaluation).
        """
        step = jax.vmap(self.particles_step)

        def body(carry, t):
            params, opt_state, loss = step(thetas, *carry, cfg, run_key, step0 + t)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            body, (params, opt_state), jnp.arange(length), unroll=self.scan_unroll
        )
        losses = jnp.moveaxis(losses, 0, 1)  # [length, S, P] -> [S, length, P]
        finite = jnp.all(jnp.isfinite(losses), axis=1)
        meta = jax.vmap(
            lambda cfg, losses: meta_loss_of(
                self.meta_loss, self.family.task(cfg), losses, self.meta_loss_floor
            )
        )(cfg, losses)
        return params, opt_state, meta, finite

    def truncation_step(self, state: UnrollState, thetas):
        """Advance every slot by one truncation with per-slot, per-particle ``thetas``.

        Returns the new state, the per-particle meta-loss (mean normalized loss over the
        truncation, ``[S, P]``) and the per-particle raw-loss finiteness ``[S, P]``.
        """
        params, opt_state, meta_losses, finite = self.slots_unroll(
            thetas, state.params, state.opt_state, state.cfg, state.step, state.key,
            self.truncation,
        )
        state = state._replace(
            params=params, opt_state=opt_state, step=state.step + self.truncation
        )
        return state, jnp.mean(meta_losses, axis=1), finite

    # -- fixed held-out evaluation -----------------------------------------------------------
    def evaluate(self, theta, draws: TaskDraw, horizon: int):
        """Train the drawn tasks (:meth:`draws`, leading axis ``M``) for ``horizon`` steps with
        unperturbed theta, from their initializations and on their data keys.

        Returns ``(mean normalized loss along the runs, mean normalized loss at the last step)``
        per task, each ``[M]``. The draws' own horizons are not used. The tasks are drawn
        outside (once per run, see :meth:`init`): drawn here, every evaluation program would
        carry its own copy of the task sampling and initialization.
        """
        unroll = dataclasses.replace(self, num_particles=1)
        num_tasks = draws.run_key.shape[0]
        thetas = broadcast_leading(theta, (num_tasks, 1))
        params, opt_state = jax.vmap(unroll.start)(draws.params, thetas)
        _, _, meta_losses, _ = unroll.slots_unroll(
            thetas, params, opt_state, draws.cfg, jnp.zeros((num_tasks,), jnp.int32),
            draws.run_key, horizon,
        )
        return jnp.mean(meta_losses, axis=(1, 2)), meta_losses[:, -1, 0]
