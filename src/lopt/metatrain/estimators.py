"""Meta-gradient estimators behind one interface: PES, antithetic ES and truncated backprop.

Every estimator owns a batch of task slots (split over the same-shape groups of a task mixture)
and exposes two pure functions::

    est_state = estimator.init(theta, key)
    meta_grad, est_state, diagnostics = estimator.step(theta, est_state, key)

``step`` advances every slot by one truncation and is meant to run inside one ``jit``.

The meta-loss of a particle is the mean over the truncation of ``task.normalizer(loss)`` (or of
its logarithm with ``meta_loss = "log"``, see :func:`lopt.metatrain.unroll.meta_loss_of`).
With ``L+`` / ``L-`` the meta-losses of an antithetic pair perturbed by ``+eps`` / ``-eps``,
``eps ~ N(0, sigma^2 I)`` drawn per slot and truncation:

* PES (Vicol et al. 2021): ``g = mean_slots (L+ - L-) / (2 sigma^2) * A`` where ``A`` is the sum
  of every ``eps`` the slot's current inner run has seen (this truncation's included). ``A``
  is reset when the run restarts, i.e. after the finished run's last truncation was credited.
* ES: the same with ``A = eps``; both members of the pair start each truncation from the state
  of the positive member (truncated ES: a biased but cheap estimate).
* TBPTT: exact gradient of the truncation's meta-loss, treating the state at the start of the
  truncation as a constant.

Without ``antithetic``, ES/PES use ``L+ / sigma^2 * A`` (unbiased, higher variance).

A pair (or, for TBPTT, a slot) whose contribution is not finite is dropped from the mean and
counted, never silently zeroed; the slot is restarted at the next truncation. ``diagnostics``:
``meta_loss`` (mean over all particles), ``nonfinite_pairs`` (pairs in which some raw training
loss was not finite -- the normalizer bounded it), ``dropped_pairs`` (contributions excluded),
``valid_pairs``, ``finished_runs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt.metatrain.config import EstimatorConfig
from lopt.metatrain.unroll import GroupUnroll, UnrollState, broadcast_leading
from lopt.tasks.base import as_groups


def allocate_slots(num_slots: int, weights) -> tuple[int, ...]:
    """Split ``num_slots`` over groups proportionally to ``weights`` (largest remainder).

    Every group gets at least one slot when there are enough slots, so no group is silently
    left out of meta-training.
    """
    n = len(weights)
    total = float(sum(weights))
    if n == 0 or total <= 0 or any(x < 0 for x in weights):
        raise ValueError(f"group weights must be >= 0 with a positive sum, got {weights}")
    w = [float(x) / total for x in weights]
    if num_slots >= n:
        base = [1] * n
        rest = num_slots - n
    else:
        base = [0] * n
        rest = num_slots
    raw = [x * rest for x in w]
    alloc = [b + int(r) for b, r in zip(base, raw, strict=True)]
    order = sorted(range(n), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[: num_slots - sum(alloc)]:
        alloc[i] += 1
    return tuple(alloc)


def _slot_finite(tree, num_slots: int) -> jax.Array:
    """``[S]`` bool: every entry of slot ``s`` is finite in every leaf."""
    ok = jnp.ones((num_slots,), bool)
    for x in jax.tree.leaves(tree):
        ok = ok & jnp.all(jnp.isfinite(x.reshape(num_slots, -1)), axis=1)
    return ok


def mean_gradient(grad_sum, valid_pairs):
    """The meta-gradient: summed contributions over the number of valid pairs (slots for
    TBPTT); zero when none was valid."""
    return jax.tree.map(lambda x: x / jnp.maximum(valid_pairs, 1).astype(x.dtype), grad_sum)


class GradientEstimator:
    """Shared machinery: slot allocation over groups, one :class:`GroupUnroll` per group."""

    def __init__(self, optimizer, task, config: EstimatorConfig, *, scan_unroll: int = 1):
        self.optimizer = optimizer
        self.config = config
        self.groups = as_groups(task)
        #: relative weight of each group (a mixture's own weights, else equal)
        self.weights = tuple(getattr(task, "weights", None) or [1.0] * len(self.groups))
        self.slots = allocate_slots(config.num_slots, self.weights)
        self.unrolls = tuple(
            GroupUnroll(
                family=g,
                optimizer=optimizer,
                truncation=config.truncation,
                horizon_min=config.horizon_min,
                horizon_max=config.horizon_max,
                num_particles=config.num_particles,
                random_offsets=config.random_offsets,
                scan_unroll=scan_unroll,
                meta_loss=config.meta_loss,
                meta_loss_floor=config.meta_loss_floor,
            )
            for g in self.groups
        )

    @property
    def inner_steps_per_step(self) -> int:
        """Inner optimizee steps one ``step`` performs: slots x truncation x particles."""
        return self.config.num_slots * self.config.truncation * self.config.num_particles

    def init(self, theta, key: jax.Array) -> tuple[UnrollState, ...]:
        return self.init_and_draw(theta, key, (None,) * len(self.unrolls))[0]

    def init_and_draw(self, theta, key: jax.Array, eval_keys):
        """:meth:`init`, and the held-out tasks of ``eval_keys`` (one entry per group: an
        ``[M, 2]`` key array or None) drawn with the slots' own tasks where the group has
        slots (:meth:`GroupUnroll.init`). Returns ``(est_state, draws)``, ``draws`` one
        :class:`~lopt.metatrain.unroll.TaskDraw` or None per group."""
        keys = jax.random.split(key, len(self.unrolls))
        states, draws = [], []
        for u, k, n, ek in zip(self.unrolls, keys, self.slots, eval_keys, strict=True):
            drawn = None
            if n > 0 and ek is not None:
                state, drawn = u.init(theta, k, n, ek)
                states.append(state)
            elif n > 0:
                states.append(u.init(theta, k, n))
            elif ek is not None:
                drawn = u.draws(ek)
            draws.append(drawn)
        return tuple(states), tuple(draws)

    def _active(self):
        return [(u, n) for u, n in zip(self.unrolls, self.slots, strict=True) if n > 0]

    def step(self, theta, est_state, key: jax.Array):
        grad_sum, est_state, totals = self.step_sum(theta, est_state, key)
        totals["meta_loss"] = totals["meta_loss"] / self.config.num_slots
        return mean_gradient(grad_sum, totals["valid_pairs"]), est_state, totals

    def step_sum(self, theta, est_state, key: jax.Array):
        """Like :meth:`step`, but unnormalized: the *sum* of the valid contributions and the
        *sum* of the slots' meta-losses (``meta_loss``), so that estimates from several
        estimators (distributed workers) can be pooled exactly: the pooled meta-gradient is
        ``mean_gradient(sum of grad sums, sum of valid_pairs)``.
        """
        grad_sum = jax.tree.map(jnp.zeros_like, theta)
        totals = dict(
            meta_loss=jnp.float32(0.0),
            nonfinite_pairs=jnp.int32(0),
            dropped_pairs=jnp.int32(0),
            valid_pairs=jnp.int32(0),
            finished_runs=jnp.int32(0),
        )
        new_states = []
        for i, ((unroll, n), state) in enumerate(zip(self._active(), est_state, strict=True)):
            g, state, diag = self.group_step(unroll, n, theta, state, jax.random.fold_in(key, i))
            grad_sum = jax.tree.map(jnp.add, grad_sum, g)
            totals = {
                k: totals[k] + (diag[k] * n if k == "meta_loss" else diag[k]) for k in totals
            }
            new_states.append(state)
        return grad_sum, tuple(new_states), totals

    def group_step(self, unroll: GroupUnroll, n: int, theta, state: UnrollState, key):
        raise NotImplementedError


class PES(GradientEstimator):
    """Antithetic persistent evolution strategies (``persistent=False``: truncated ES)."""

    persistent = True

    def group_step(self, unroll, n, theta, state, key):
        sigma = self.config.sigma
        k_eps, k_reset = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(theta)
        eps_keys = jax.random.split(k_eps, max(len(leaves), 1))
        eps = jax.tree.unflatten(
            treedef,
            [
                sigma * jax.random.normal(k, (n,) + jnp.shape(x), jnp.float32)
                for k, x in zip(eps_keys, leaves, strict=False)
            ],
        )
        signs = jnp.array([1.0, -1.0][: unroll.num_particles], jnp.float32)

        def perturb(t, e):
            s = signs.reshape((1, unroll.num_particles) + (1,) * (e.ndim - 1))
            return t[None, None] + s * e[:, None]

        thetas = jax.tree.map(perturb, theta, eps)
        state, done = unroll.reset_finished(state, thetas, k_reset)
        if self.persistent:
            acc = jax.tree.map(jnp.add, state.acc, eps)
        else:
            acc = eps
            # truncated ES: the pair starts from the positive member's state
            sync = lambda x: jnp.broadcast_to(x[:, :1], x.shape)
            state = state._replace(
                params=jax.tree.map(sync, state.params),
                opt_state=jax.tree.map(sync, state.opt_state),
            )
        state, meta_loss, finite = unroll.truncation_step(state._replace(acc=acc), thetas)
        if unroll.num_particles == 2:
            coef = (meta_loss[:, 0] - meta_loss[:, 1]) / (2.0 * sigma**2)
        else:
            coef = meta_loss[:, 0] / sigma**2
        contrib = jax.tree.map(lambda a: coef.reshape((n,) + (1,) * (a.ndim - 1)) * a, acc)
        ok = jnp.isfinite(coef) & _slot_finite(contrib, n)
        return _combine_slots(contrib, ok, state, meta_loss, finite, done, n)


class ES(PES):
    """Antithetic ES over one truncation (no accumulation across truncations)."""

    persistent = False


class TruncatedBackprop(GradientEstimator):
    """Truncated backpropagation through one truncation, per slot (non-finite slots dropped)."""

    def group_step(self, unroll, n, theta, state, key):
        thetas = broadcast_leading(jax.lax.stop_gradient(theta), (n, 1))
        state, done = unroll.reset_finished(state, thetas, key)
        state = jax.lax.stop_gradient(state)

        def slot_loss(theta, params, opt_state, cfg, step0, run_key):
            thetas_p = broadcast_leading(theta, (1,))
            params, opt_state, meta_losses, finite = unroll.slot_unroll(
                thetas_p, params, opt_state, cfg, step0, run_key, unroll.truncation
            )
            return jnp.mean(meta_losses), (params, opt_state, finite)

        grads, (meta_loss, (params, opt_state, finite)) = jax.vmap(
            lambda *a: _value_and_grad_aux(slot_loss)(*a), in_axes=(None, 0, 0, 0, 0, 0)
        )(theta, state.params, state.opt_state, state.cfg, state.step, state.key)
        state = state._replace(
            params=params, opt_state=opt_state, step=state.step + unroll.truncation
        )
        ok = jnp.isfinite(meta_loss) & _slot_finite(grads, n)
        return _combine_slots(grads, ok, state, meta_loss, finite, done, n)


def _combine_slots(per_slot, ok, state, meta_loss, finite, done, n):
    """Sum the valid slots' gradient contributions and build the diagnostics.

    Slots with a non-finite contribution are dropped (not zeroed into the mean) and counted;
    a dropped slot restarts at the next truncation.
    """
    grad = jax.tree.map(
        lambda c: jnp.sum(jnp.where(ok.reshape((n,) + (1,) * (c.ndim - 1)), c, 0.0), axis=0),
        per_slot,
    )
    state = state._replace(step=jnp.where(ok, state.step, state.horizon))
    diag = dict(
        meta_loss=jnp.mean(meta_loss),
        nonfinite_pairs=jnp.sum(~jnp.all(finite, axis=1)).astype(jnp.int32),
        dropped_pairs=jnp.sum(~ok).astype(jnp.int32),
        valid_pairs=jnp.sum(ok).astype(jnp.int32),
        finished_runs=jnp.sum(done).astype(jnp.int32),
    )
    return grad, state, diag


def _value_and_grad_aux(fn):
    def wrapped(theta, *args):
        (value, aux), grads = jax.value_and_grad(fn, has_aux=True)(theta, *args)
        return grads, (value, aux)

    return wrapped


ESTIMATOR_CLASSES = {"pes": PES, "es": ES, "tbptt": TruncatedBackprop}


def make_estimator(optimizer, task, config: EstimatorConfig, **kwargs) -> GradientEstimator:
    """The estimator named by ``config.estimator`` for ``optimizer`` on ``task``."""
    return ESTIMATOR_CLASSES[config.estimator](optimizer, task, config, **kwargs)
