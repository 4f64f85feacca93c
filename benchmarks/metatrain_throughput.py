"""Meta-training throughput: inner optimizee steps per second under PES.

Configuration (the reference implementation's): the default MLP family (digits 64-32-10 MLP,
batch 128, ``digits_mlp_family``), antithetic PES, 8 slots, truncation 50, horizons 200-2000.
The same jitted estimator step (scan over inner steps, vmap over slots and the antithetic pair)
is timed for STAR, the blackbox LO and plain Adam (``OptaxOptimizer(optax.adam)`` with
theta = {}, i.e. the same layout with an empty perturbation), in one process.

Inner steps are counted as slots x truncation x 2 (both members of each antithetic pair are an
optimizee step) per outer step. Prints one JSON object.

    python benchmarks/metatrain_throughput.py [--steps 40] [--slots 8] [--truncation 50]
"""

from __future__ import annotations

import argparse
import json
import time


def measure(optimizer, task, args) -> dict:
    import jax

    from lopt.metatrain.config import EstimatorConfig
    from lopt.metatrain.estimators import make_estimator

    cfg = EstimatorConfig(
        estimator="pes",
        sigma=0.01,
        truncation=args.truncation,
        horizon_min=200,
        horizon_max=2000,
        num_slots=args.slots,
    )
    est = make_estimator(optimizer, task, cfg, scan_unroll=args.unroll)
    theta = optimizer.init(jax.random.PRNGKey(0))
    state = est.init(theta, jax.random.PRNGKey(1))
    step = jax.jit(est.step, donate_argnums=(1,))
    t0 = time.perf_counter()
    grad, state, diag = step(theta, state, jax.random.PRNGKey(2))
    jax.block_until_ready((grad, state))
    compile_s = time.perf_counter() - t0
    # best of a few timed windows: the machine is shared, the minimum is the least disturbed
    best = float("inf")
    per_window = max(1, args.steps // args.windows)
    key = jax.random.PRNGKey(3)
    for w in range(args.windows):
        t0 = time.perf_counter()
        for i in range(per_window):
            grad, state, diag = step(theta, state, jax.random.fold_in(key, w * 1000 + i))
        jax.block_until_ready((grad, state))
        best = min(best, (time.perf_counter() - t0) / per_window)
    return {
        "inner_steps_per_s": est.inner_steps_per_step / best,
        "outer_steps_per_s": 1.0 / best,
        "compile_s": compile_s,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed outer steps per optimizer")
    parser.add_argument("--windows", type=int, default=4, help="timing windows (best is kept)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--unroll", type=int, default=1, help="lax.scan unroll factor")
    parser.add_argument("--tasks", default="digits_mlp_family")
    args = parser.parse_args(argv)

    import jax
    import optax

    from lopt import tasks
    from lopt.optimizers import STAR, Blackbox, OptaxOptimizer

    task = tasks.get(args.tasks)
    results = {}
    for name, opt in (
        ("star", STAR()),
        ("blackbox", Blackbox()),
        ("adam", OptaxOptimizer(optax.adam(1e-3))),
    ):
        results[name] = measure(opt, task, args)
    out = {
        "star_inner_steps_per_s": round(results["star"]["inner_steps_per_s"], 1),
        "blackbox_inner_steps_per_s": round(results["blackbox"]["inner_steps_per_s"], 1),
        "adam_inner_steps_per_s": round(results["adam"]["inner_steps_per_s"], 1),
        "star_to_adam": round(
            results["star"]["inner_steps_per_s"] / results["adam"]["inner_steps_per_s"], 3
        ),
        "blackbox_to_adam": round(
            results["blackbox"]["inner_steps_per_s"] / results["adam"]["inner_steps_per_s"], 3
        ),
        "compile_s": {k: round(v["compile_s"], 2) for k, v in results.items()},
        "counting": "inner steps = slots x truncation x 2 (antithetic pair) per PES step",
        "config": {
            "tasks": args.tasks,
            "slots": args.slots,
            "truncation": args.truncation,
            "estimator": "pes",
            "scan_unroll": args.unroll,
            "timed_outer_steps": args.steps,
        },
        "devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
