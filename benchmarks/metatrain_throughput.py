"""Meta-training throughput: inner optimizee steps per second under PES (or ``--estimator``).

Configuration (the reference implementation's): the default MLP family (digits 64-32-10 MLP,
batch 128, ``digits_mlp_family``), antithetic PES, 8 slots, truncation 50, horizons 200-2000.
The same jitted estimator step (scan over inner steps, vmap over slots and the antithetic pair)
is timed for STAR, STAR with the shipped weights' switches (``star_shipped``: the learned step
size and ``distance_feature``), the blackbox LO and plain Adam (``OptaxOptimizer(optax.adam)`` with
theta = {}, i.e. the same layout with an empty perturbation), in one process.

Inner steps are counted as slots x truncation x 2 (both members of each antithetic pair are an
optimizee step) per outer step. The step is compiled as ``lopt meta-train`` compiles it
(:func:`lopt.utils.compile.optimizer_jit`). Rates come from the best wall-clock window and, as
``*_cpu``, from process CPU time (steadier on a shared machine); ``peak_rss_mb`` is the
process's peak resident memory. Prints one JSON object.

    python benchmarks/metatrain_throughput.py [--steps 40] [--slots 8] [--truncation 50]
        [--estimator pes|es|tbptt]

Under ``tbptt`` an outer step is one forward and one backward pass through the unroll (no
antithetic pair: slots x truncation inner steps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time


def build(optimizer, task, args):
    """A compiled PES step for ``optimizer`` and its state; returns (run_window, info)."""
    import jax

    from lopt.metatrain.config import EstimatorConfig
    from lopt.metatrain.estimators import make_estimator
    from lopt.metatrain.trainer import slot_sharding
    from lopt.utils.compile import optimizer_jit

    cfg = EstimatorConfig(
        estimator=args.estimator,
        sigma=0.01,
        truncation=args.truncation,
        horizon_min=200,
        horizon_max=2000,
        num_slots=args.slots,
    )
    est = make_estimator(optimizer, task, cfg, scan_unroll=args.unroll)
    theta = optimizer.init(jax.random.PRNGKey(0))
    box = {"state": est.init(theta, jax.random.PRNGKey(1))}
    state_sharding, replicated = slot_sharding(box["state"])
    if state_sharding is not None:  # several devices: split the slot axis over them
        box["state"] = jax.device_put(box["state"], state_sharding)
        theta = jax.device_put(theta, replicated)
    jit = optimizer_jit(optimizer, differentiated=cfg.differentiates_optimizer)
    step = jit(est.step, donate_argnums=(1,))
    t0 = time.perf_counter()
    grad, box["state"], _ = step(theta, box["state"], jax.random.PRNGKey(2))
    jax.block_until_ready((grad, box["state"]))
    compile_s = time.perf_counter() - t0
    key = jax.random.PRNGKey(3)

    def window(w: int, n: int) -> tuple[float, float]:
        """Wall and CPU seconds per outer step over ``n`` steps."""
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            grad, box["state"], _ = step(theta, box["state"], jax.random.fold_in(key, w * n + i))
        jax.block_until_ready((grad, box["state"]))
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    return window, {"compile_s": compile_s, "inner_steps_per_step": est.inner_steps_per_step}


def measure_all(optimizers: dict, task, args) -> dict:
    """Interleaved timing windows (A B C A B C ...); the best window per optimizer is kept.

    The machine is shared: interleaving exposes every optimizer to the same load, and the
    minimum over windows is the least disturbed estimate.
    """
    built = {name: build(opt, task, args) for name, opt in optimizers.items()}
    per_window = max(1, args.steps // args.windows)
    best = {name: float("inf") for name in built}
    best_cpu = {name: float("inf") for name in built}
    for w in range(args.windows):
        for name, (window, _) in built.items():
            wall, cpu = window(w, per_window)
            best[name] = min(best[name], wall)
            best_cpu[name] = min(best_cpu[name], cpu)
    return {
        name: {
            "inner_steps_per_s": info["inner_steps_per_step"] / best[name],
            "inner_steps_per_cpu_s": info["inner_steps_per_step"] / best_cpu[name],
            "outer_steps_per_s": 1.0 / best[name],
            "compile_s": info["compile_s"],
        }
        for name, (_, info) in built.items()
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed outer steps per optimizer")
    parser.add_argument("--windows", type=int, default=4, help="timing windows (best is kept)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--unroll", type=int, default=1, help="lax.scan unroll factor")
    parser.add_argument("--tasks", default="digits_mlp_family")
    parser.add_argument("--estimator", default="pes", choices=("pes", "es", "tbptt"))
    parser.add_argument(
        "--activation",
        help="fix the family's activation (e.g. relu); default: the registered family, whose "
        "per-task activation is traced, so under vmap every candidate activation is computed",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="host CPU devices to shard the slots over (sets XLA_FLAGS before JAX starts)",
    )
    args = parser.parse_args(argv)
    if args.devices > 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()

    import jax
    import optax

    from lopt import tasks
    from lopt.optimizers import STAR, Blackbox, OptaxOptimizer, pretrained

    task = tasks.get(args.tasks)
    if args.activation:
        import dataclasses

        task = dataclasses.replace(task, activations=(args.activation,))
    optimizers = {
        "star": STAR(),
        "star_step_size": STAR(step_size_controller=True),
        "star_shipped": pretrained.resolve("star")[1],
        "blackbox": Blackbox(),
        "adam": OptaxOptimizer(optax.adam(1e-3)),
    }
    results = measure_all(optimizers, task, args)
    out = {
        "star_inner_steps_per_s": round(results["star"]["inner_steps_per_s"], 1),
        "star_step_size_inner_steps_per_s": round(
            results["star_step_size"]["inner_steps_per_s"], 1
        ),
        "star_shipped_inner_steps_per_s": round(results["star_shipped"]["inner_steps_per_s"], 1),
        "star_shipped_to_adam": round(
            results["star_shipped"]["inner_steps_per_s"] / results["adam"]["inner_steps_per_s"], 3
        ),
        "blackbox_inner_steps_per_s": round(results["blackbox"]["inner_steps_per_s"], 1),
        "adam_inner_steps_per_s": round(results["adam"]["inner_steps_per_s"], 1),
        "star_to_adam": round(
            results["star"]["inner_steps_per_s"] / results["adam"]["inner_steps_per_s"], 3
        ),
        "blackbox_to_adam": round(
            results["blackbox"]["inner_steps_per_s"] / results["adam"]["inner_steps_per_s"], 3
        ),
        "star_step_size_to_adam_cpu": round(
            results["star_step_size"]["inner_steps_per_cpu_s"]
            / results["adam"]["inner_steps_per_cpu_s"], 3
        ),
        "star_to_adam_cpu": round(
            results["star"]["inner_steps_per_cpu_s"] / results["adam"]["inner_steps_per_cpu_s"], 3
        ),
        "blackbox_to_adam_cpu": round(
            results["blackbox"]["inner_steps_per_cpu_s"]
            / results["adam"]["inner_steps_per_cpu_s"], 3
        ),
        "compile_s": {k: round(v["compile_s"], 2) for k, v in results.items()},
        "counting": "inner steps = slots x truncation x particles (2 for the antithetic "
        "pair of PES/ES, 1 for TBPTT) per outer step",
        "config": {
            "tasks": args.tasks,
            "activation": args.activation or "per-task (relu, tanh, gelu, silu)",
            "slots": args.slots,
            "truncation": args.truncation,
            "estimator": args.estimator,
            "scan_unroll": args.unroll,
            "timed_outer_steps": args.steps,
        },
        "devices": [str(d) for d in jax.devices()],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
