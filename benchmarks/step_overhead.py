"""Milliseconds per jitted update: optax.adam vs Blackbox vs STAR on a ~1M-parameter MLP.

Prints one JSON object. Ratios (``star_to_adam``, ``blackbox_to_adam``) are measured in the same
process, so they compare like with like on whatever machine runs this.

    python benchmarks/step_overhead.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from lopt.optimizers import STAR, Blackbox


def mlp_params(key, sizes=(784, 1024, 256, 10)):
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"layer{i}"] = {
            "kernel": jax.random.normal(sub, (a, b)) / jnp.sqrt(a),
            "bias": jnp.zeros((b,)),
        }
    return params


def time_update(tx, params, grads, repeats: int) -> float:
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):  # compile and warm up
        jax.block_until_ready(step(params, state, grads))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    params = mlp_params(key)
    grads = jax.tree.map(lambda p: 1e-2 * jax.random.normal(key, p.shape), params)
    n = sum(p.size for p in jax.tree.leaves(params))
    star, bb = STAR(), Blackbox()
    res = {
        "num_params": int(n),
        "adam_ms": time_update(optax.adam(1e-3), params, grads, args.repeats),
        "blackbox_ms": time_update(
            bb.as_optax(bb.init(key), max_nonfinite_skips=0), params, grads, args.repeats
        ),
        "star_ms": time_update(
            star.as_optax(star.init(key), max_nonfinite_skips=0), params, grads, args.repeats
        ),
    }
    res["star_to_adam"] = res["star_ms"] / res["adam_ms"]
    res["blackbox_to_adam"] = res["blackbox_ms"] / res["adam_ms"]
    res["backend"] = jax.default_backend()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
