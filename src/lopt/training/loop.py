"""The one inner-training loop: ``lopt train``, ``lopt evaluate`` and ``lopt reproduce`` run it.

A call trains one concrete :class:`~lopt.tasks.base.Task` with ``G`` optimizer variants x ``S``
seeds in a single jitted program: ``vmap`` over variants (the leading axis of ``thetas``, e.g. a
learning-rate grid) and over seeds, ``lax.scan`` over steps. Optimizers are built *inside* the
traced program from their parameters, ``make_tx(theta) -> optax transformation``, so a
learning-rate grid is just a vector of ``theta`` values and one compiled program serves it.

The host drives the scan in chunks of a few dozen to a few hundred steps so that it can show
progress, evaluate the held-out loss, check an interruption flag (never raising into a running
XLA computation), and stop early when every run has diverged.

Keys: seed ``s`` gives ``k_task, k_init, k_data, k_eval = split(PRNGKey(s), 4)`` (see
:func:`seed_keys`); the batch of step ``t`` is drawn from ``fold_in(k_data, t)``, so results do not
depend on the chunking and every variant of one seed sees the same batches (common random
numbers, which makes comparisons across a grid less noisy).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.tasks.base import Task
from lopt.utils.compile import jit

#: ``make_tx(theta) -> optax.GradientTransformation``; called under ``jit``/``vmap``.
MakeTx = Callable[[Any], optax.GradientTransformation]

#: When to stop before ``steps``: never, when any run's loss is non-finite, or when all are.
STOP_RULES = ("never", "any", "all")


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(k_task, k_init, k_data, k_eval)`` of one seed (``lopt train`` draws a family's task
    with ``k_task``)."""
    return tuple(jax.random.split(jax.random.PRNGKey(int(seed)), 4))


@dataclasses.dataclass
class TrainCurves:
    """What a run of :func:`train_curves` recorded.

    Attributes:
        losses: ``[G, S, steps_done]`` training (minibatch) loss at the parameters *before*
            each update, float64 on the host; NaN/inf where a run diverged.
        eval_steps: number of updates done at each held-out evaluation (0 first).
        eval_losses: ``[G, S, len(eval_steps)]`` held-out loss (NaN when the task has none).
        steps: steps requested; ``steps_done`` the steps run (fewer when stopped early).
        stopped: ``None``, ``"interrupted"`` or ``"non_finite"``.
        wall_s: seconds in the loop, ``compile_s`` of which were spent compiling.
        eval_accuracies: ``[G, S, len(eval_steps)]`` held-out accuracy at the same steps for
            classification tasks (``Task.eval_accuracy``), else None.
    """

    losses: np.ndarray
    eval_steps: list[int]
    eval_losses: np.ndarray
    steps: int
    steps_done: int
    stopped: str | None
    wall_s: float
    compile_s: float
    eval_accuracies: np.ndarray | None = None

    @property
    def has_eval(self) -> bool:
        return bool(np.isfinite(self.eval_losses).any())


def choose_chunk(steps: int, eval_every: int | None, target: int | None = None) -> int:
    """Steps per jitted call: about 1% of the run (progress moves at least every 1%), at least
    10 (host round trips stay negligible), at most 500, and a divisor of ``eval_every``."""
    if target is None:
        target = min(500, max(10, math.ceil(steps / 100)))
    target = max(1, min(target, max(steps, 1)))
    if eval_every:
        target = min(target, eval_every)
        while eval_every % target:
            target -= 1
    return target


def train_curves(
    task: Task,
    make_tx: MakeTx,
    thetas,
    seeds: Sequence[int],
    steps: int,
    *,
    eval_every: int | None = None,
    chunk: int | None = None,
    stop_on_nonfinite: str = "all",
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[int, np.ndarray], None] | None = None,
    on_compile: Callable[[], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    xla_options: dict | None = None,
) -> TrainCurves:
    """Train ``task`` with every variant in ``thetas`` (leading axis ``G``) for every seed.

    Args:
        make_tx: builds the optimizer from one variant's ``theta`` (traced).
        thetas: a pytree whose leaves have a leading axis ``G`` (use
            :func:`stack_variants` to build one).
        seeds: integer seeds (``S`` of them); see :func:`seed_keys`.
        steps: optimizer updates per run (>= 1).
        eval_every: updates between held-out evaluations (``None``: no evaluation except at
            0 and the end; ignored when the task has no ``eval_loss``). Rounded up to a
            multiple of the chunk length.
        chunk: steps per jitted call (default :func:`choose_chunk`).
        stop_on_nonfinite: ``"any"`` stops at the end of the chunk in which any run's loss
            became non-finite (``lopt train``), ``"all"`` once every run has (evaluations:
            nothing left to learn), ``"never"`` runs to the end.
        should_stop: polled between jitted calls; ``True`` stops the run cleanly
            (``stopped="interrupted"``) with everything done so far returned.
        on_chunk: ``on_chunk(steps_done, losses_of_this_chunk [G, S, n], eval_or_None)``
            after each call; the third argument is the ``[G, S]`` held-out loss when an
            evaluation happened at ``steps_done``. It is also called once before the first
            step, as ``on_chunk(0, <[G, S, 0] array>, eval_at_step_0_or_None)``.
        on_compile: called once before the first (compiling) jitted call.
        on_eval: ``on_eval(steps_done, {"eval_loss": [G, S], "eval_accuracy": [G, S]})``
            right after each held-out evaluation (before that chunk's ``on_chunk``); the
            accuracy entry only for tasks with ``eval_accuracy``.
        xla_options: extra compile options for the training program (the optimizer's,
            ``OptimizerSpec.xla_options``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if stop_on_nonfinite not in STOP_RULES:
        raise ValueError(f"stop_on_nonfinite must be one of {STOP_RULES}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    num_variants = {int(np.shape(x)[0]) for x in jax.tree.leaves(thetas)}
    if len(num_variants) > 1:
        raise ValueError(f"thetas leaves disagree on the variant axis: {sorted(num_variants)}")
    num_variants = num_variants.pop() if num_variants else 1

    has_eval = task.eval_loss is not None
    has_acc = has_eval and getattr(task, "eval_accuracy", None) is not None
    chunk = chunk or choose_chunk(steps, eval_every if has_eval else None)
    if has_eval:
        eval_every = math.ceil((eval_every or steps) / chunk) * chunk
    keys = [seed_keys(s) for s in seeds]
    k_init = jnp.stack([k[1] for k in keys])
    k_data = jnp.stack([k[2] for k in keys])
    k_eval = jnp.stack([k[3] for k in keys])

    def init_one(theta, key):
        params = task.init(key)
        return params, make_tx(theta).init(params)

    def chunk_one(theta, params, state, key, start, total):
        tx = optax.with_extra_args_support(make_tx(theta))

        def update(carry, t):
            params, state = carry
            batch = task.sample_batch(jax.random.fold_in(key, t))
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = tx.update(grads, state, params, loss=loss)
            return (optax.apply_updates(params, updates), state), loss.astype(jnp.float32)

        def skip(carry, t):  # past the requested steps (last, partial chunk)
            del t
            return carry, jnp.float32(jnp.nan)

        def body(carry, t):
            # ``t`` and ``total`` are the same for every run, so under vmap this stays a
            # real conditional (no wasted work after the last step).
            return jax.lax.cond(t < total, update, skip, carry, t)

        (params, state), losses = jax.lax.scan(body, (params, state), start + jnp.arange(chunk))
        return params, state, losses

    over_seeds = dict(in_axes=(None, 0, 0, 0, None, None))
    over_variants = dict(in_axes=(0, 0, 0, None, None, None))
    run_chunk = jit(
        jax.vmap(jax.vmap(chunk_one, **over_seeds), **over_variants), donate_argnums=(1, 2),
        extra_options=xla_options,
    )
    init_all = jit(jax.vmap(jax.vmap(init_one, in_axes=(None, 0)), in_axes=(0, None)))
    evaluate = None
    if has_eval:
        def ev(params, key):
            loss = task.eval_loss(params, key).astype(jnp.float32)
            if not has_acc:
                return loss, jnp.float32(jnp.nan)
            return loss, task.eval_accuracy(params, key).astype(jnp.float32)

        evaluate = jit(jax.vmap(jax.vmap(ev, in_axes=(0, 0)), in_axes=(0, None)))

    t_start = time.perf_counter()
    if on_compile is not None:
        on_compile()
    t_compile = time.perf_counter()
    params, state = init_all(thetas, k_init)
    eval_steps: list[int] = []
    eval_rows: list[np.ndarray] = []
    acc_rows: list[np.ndarray] = []

    def do_eval(done: int) -> np.ndarray:
        loss, acc = jax.device_get(evaluate(params, k_eval))
        eval_steps.append(done)
        eval_rows.append(np.asarray(loss, np.float64))
        acc_rows.append(np.asarray(acc, np.float64))
        if on_eval is not None:
            row = {"eval_loss": eval_rows[-1]}
            if has_acc:
                row["eval_accuracy"] = acc_rows[-1]
            on_eval(done, row)
        return eval_rows[-1]

    row0 = do_eval(0) if has_eval else None
    if on_chunk is not None:
        on_chunk(0, np.zeros((num_variants, len(seeds), 0)), row0)
    compile_s = time.perf_counter() - t_compile  # init + eval compile; the chunk's added below
    pieces: list[np.ndarray] = []
    done, stopped = 0, None
    total = jnp.int32(steps)
    while done < steps:
        if should_stop is not None and should_stop():
            stopped = "interrupted"
            break
        t0 = time.perf_counter()
        params, state, losses = run_chunk(thetas, params, state, k_data, jnp.int32(done), total)
        losses = np.asarray(jax.device_get(losses), np.float64)  # [G, S, chunk]
        if not pieces:
            compile_s += time.perf_counter() - t0
        n = min(chunk, steps - done)
        losses = losses[..., :n]
        pieces.append(losses)
        done += n
        row = None
        if has_eval and (done % eval_every == 0 or done == steps):
            row = do_eval(done)
        if on_chunk is not None:
            on_chunk(done, losses, row)
        bad = ~np.isfinite(losses)
        if stop_on_nonfinite == "any" and bad.any():
            stopped = "non_finite"
            break
        if stop_on_nonfinite == "all" and bad[..., -1].all():
            stopped = "non_finite"
            break
    all_losses = (
        np.concatenate(pieces, axis=-1)
        if pieces
        else np.zeros((num_variants, len(seeds), 0), np.float64)
    )
    eval_losses = (
        np.stack(eval_rows, axis=-1)
        if eval_rows
        else np.full((num_variants, len(seeds), 0), np.nan)
    )
    return TrainCurves(
        losses=all_losses,
        eval_steps=eval_steps,
        eval_losses=eval_losses,
        steps=steps,
        steps_done=done,
        stopped=stopped,
        wall_s=time.perf_counter() - t_start,
        compile_s=compile_s,
        eval_accuracies=np.stack(acc_rows, axis=-1) if has_acc and acc_rows else None,
    )


def stack_variants(thetas: Sequence[Any]):
    """Stack a list of same-structure ``theta`` pytrees along a new leading variant axis."""
    if not thetas:
        raise ValueError("need at least one variant")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *thetas)


def first_nonfinite(losses: np.ndarray) -> int | None:
    """Index of the first non-finite entry of a 1-D loss curve, or None."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
    return int(bad[0]) if bad.size else None


__all__ = [
    "STOP_RULES",
    "TrainCurves",
    "choose_chunk",
    "first_nonfinite",
    "seed_keys",
    "stack_variants",
    "train_curves",
]
