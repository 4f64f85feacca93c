"""Which step size does a STAR's learned controller choose, task by task?

    python scripts/step_size_probe.py digits_mlp mnist1d_mlp_wide cnn_family@0 --steps 1000

Trains each task (``NAME`` or ``NAME@K``, as ``lopt evaluate --tasks``) with the shipped STAR (or
``--weights PATH``) and prints one JSON line per task: the learned step size ``k`` (the
geometric mean over the parameter tensors, and its smallest and largest tensor) at a few
steps, and the final training loss. Each tensor counts with its mean ``k``: one number per
tensor when the controller is aggregated per tensor (``step_size_aggregation="tensor"``, as
shipped), the mean over its coordinates otherwise. A diagnostic for issue 9: a controller that
adapts to the task should pick different ``k`` where tuned Adam picks different learning rates.

``k`` is read with a ``jax.debug.callback`` in ``STAR.step_size`` (a subclass here, nothing in
the library changes), so the step runs slower than usual; the numbers are the update's own.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.evaluate.suites import build_task, check_task_name
from lopt.optimizers import STAR, pretrained


def probe(task, theta, optimizer: STAR, steps: int, seed: int) -> dict:
    """``k`` per step and tensor of ``optimizer`` (with ``theta``) training ``task``."""
    if not optimizer.step_size_controller:
        raise SystemExit("these weights have no learned step size (step_size_controller off)")
    seen: list[float] = []

    class Recording(type(optimizer)):
        def step_size(self, c):
            k = super().step_size(c)
            jax.debug.callback(lambda v: seen.append(float(v)), jnp.mean(k))
            return k

    recording = Recording.from_config(optimizer.config())
    tx = recording.as_optax(theta, max_nonfinite_skips=None)
    params = task.init(jax.random.PRNGKey(seed))
    state = tx.init(params)

    @jax.jit
    def step(params, state, key):
        loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(key))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    key = jax.random.PRNGKey(seed + 1)
    loss = jnp.nan
    for i in range(steps):
        params, state, loss = step(params, state, jax.random.fold_in(key, i))
    jax.effects_barrier()
    log_k = np.log(np.asarray(seen).reshape(steps, -1))
    at = sorted({1, 10, 100, steps // 2, steps} & set(range(1, steps + 1)))
    return {
        "tensors": log_k.shape[1],
        "k_geomean": {t: round(float(np.exp(log_k[t - 1].mean())), 3) for t in at},
        "k_min": {t: round(float(np.exp(log_k[t - 1].min())), 3) for t in at},
        "k_max": {t: round(float(np.exp(log_k[t - 1].max())), 3) for t in at},
        "final_loss": float(loss),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tasks", nargs="+", help="NAME or NAME@K (see `lopt tasks`)")
    ap.add_argument("--weights", help="saved STAR meta-parameters (default: the shipped STAR)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be >= 1")
    for name in a.tasks:
        check_task_name(name)
    theta, optimizer = pretrained.resolve("star", a.weights)
    for name in a.tasks:
        row = probe(build_task(name), theta, optimizer, a.steps, a.seed)
        print(json.dumps({"task": name, "steps": a.steps, "seed": a.seed, **row}), flush=True)


if __name__ == "__main__":
    main()
