"""Milliseconds per update: optax.adam vs Blackbox vs STAR on a ~1M-parameter MLP, and the same
for the PyTorch front-end (``lopt.torch.STAR`` / ``Blackbox`` vs ``torch.optim.Adam``).

Prints one JSON object. Ratios (``star_to_adam``, ``blackbox_to_adam``, ``torch_star_to_adam``,
``torch_blackbox_to_adam``) are measured in the same process, so they compare like with like on
whatever machine runs this. The torch optimizers are stepped in turn within each repeat, so a
load spike on a shared machine hits all of them; the torch part is skipped, with a note, when
torch is not installed.

Also reported: ``*_cpu_ms`` (process CPU seconds per update over a window of updates: on a
shared machine the steadier number, since time slices lost to other processes do not count),
``star_step_size`` (STAR with the learned step size of the shipped recipe), ``star_shipped``
(``lopt.star()``'s optimizer without the guard: the shipped weights and switches, including
``distance_feature``'s extra pass and state), ``star_guarded``
(STAR inside the non-finite guard that ``as_optax`` adds by default; the other learned
optimizers are timed without it, as ``optax.adam`` has none), ``star_step_size_lopt_options``
(the learned step size jitted with ``lopt.utils.compile.optimizer_options``, as lopt's own
loops compile it), the optimizer state
in bytes per parameter (``state_bytes_per_param``, next to Adam's 8) and the process's peak
resident memory (``peak_rss_mb``).

    python benchmarks/step_overhead.py [--repeats 50] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from lopt.optimizers import STAR, Blackbox, pretrained
from lopt.utils.compile import optimizer_options


def mlp_params(key, sizes=(784, 1024, 256, 10)):
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"layer{i}"] = {
            "kernel": jax.random.normal(sub, (a, b)) / jnp.sqrt(a),
            "bias": jnp.zeros((b,)),
        }
    return params


def state_bytes_per_param(tx, params) -> float:
    """Bytes of optimizer state per parameter (shapes only: nothing is allocated)."""
    state = jax.eval_shape(tx.init, params)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return nbytes / sum(p.size for p in jax.tree.leaves(params))


def compiled_update(tx, params, grads, compiler_options=None):
    """``tx``'s update plus ``apply_updates``, jitted with XLA's defaults (as a user would)
    unless ``compiler_options`` are given."""
    state = tx.init(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, compiler_options=compiler_options)

    for _ in range(3):  # compile and warm up
        jax.block_until_ready(step(params, state, grads))
    return lambda: jax.block_until_ready(step(params, state, grads))


def time_updates(txs: dict, params, grads, repeats: int, window: int = 5,
                 options: dict | None = None) -> dict:
    """Wall ms per update (median and best over ``repeats``) and CPU ms per update (best
    window of ``window`` updates), the optimizers interleaved so that load hits all alike."""
    options = options or {}
    steps = {name: compiled_update(tx, params, grads, options.get(name))
             for name, tx in txs.items()}
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            wall[name].append(time.perf_counter() - t0)
    for _ in range(max(1, repeats // window)):
        for name, step in steps.items():
            c0 = time.process_time()
            for _ in range(window):
                step()
            cpu[name].append((time.process_time() - c0) / window)
    return {
        name: {
            "ms": 1e3 * statistics.median(wall[name]),
            "best_ms": 1e3 * min(wall[name]),
            "cpu_ms": 1e3 * min(cpu[name]),
        }
        for name in steps
    }


def torch_step_overhead(repeats: int, threads: int | None) -> dict:
    """``optimizer.step()`` of torch Adam, lopt.torch.STAR and Blackbox on the same MLP shape."""
    try:
        import torch

        import lopt.torch
    except ImportError as err:
        return {"torch": f"skipped: {err} (pip install -e '.[torch]')"}
    if threads:
        torch.set_num_threads(threads)
    sizes = (784, 1024, 256, 10)

    def model_params():
        torch.manual_seed(0)
        layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        params = [p for layer in layers for p in layer.parameters()]
        for p in params:
            p.grad = 1e-2 * torch.randn_like(p)
        return params

    opts = {
        "adam": torch.optim.Adam(model_params(), lr=1e-3),
        "star": lopt.torch.STAR(model_params()),
        "blackbox": lopt.torch.Blackbox(model_params()),
    }
    times = {name: [] for name in opts}
    for _ in range(3):  # warm up (workspace, caches)
        for opt in opts.values():
            opt.step()
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    best = {name: 1e3 * min(t) for name, t in times.items()}
    return {
        "torch_num_params": sum(p.numel() for p in opts["adam"].param_groups[0]["params"]),
        "torch_adam_ms": ms["adam"],
        "torch_star_ms": ms["star"],
        "torch_blackbox_ms": ms["blackbox"],
        "torch_star_to_adam": ms["star"] / ms["adam"],
        "torch_blackbox_to_adam": ms["blackbox"] / ms["adam"],
        "torch_star_to_adam_best": best["star"] / best["adam"],
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own default)")
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    params = mlp_params(key)
    grads = jax.tree.map(lambda p: 1e-2 * jax.random.normal(key, p.shape), params)
    n = sum(p.size for p in jax.tree.leaves(params))
    shipped_theta, shipped = pretrained.resolve("star")
    star, step_size = STAR(), STAR(step_size_controller=True)
    # name: (optimizer, theta (None: its meta-initialization), non-finite guard, compile
    # options). No guard, like optax.adam, except "star_guarded" (lopt.star()'s default);
    # "star_step_size_lopt_options" is jitted with the options lopt's own loops use for it.
    rows = {
        "blackbox": (Blackbox(), None, False, None),
        "star": (star, None, False, None),
        "star_step_size": (step_size, None, False, None),
        "star_shipped": (shipped, shipped_theta, False, None),
        "star_guarded": (star, None, True, None),
        "star_step_size_lopt_options": (step_size, None, False, optimizer_options(step_size)),
    }
    txs = {"adam": optax.adam(1e-3)}
    for name, (opt, theta, guarded, _) in rows.items():
        theta = opt.init(key) if theta is None else theta
        txs[name] = (opt.as_optax(theta) if guarded
                     else opt.as_optax(theta, max_nonfinite_skips=None))
    options = {name: row[3] for name, row in rows.items() if row[3]}
    times = time_updates(txs, params, grads, args.repeats, options=options)
    res = {"num_params": int(n)}
    for name, t in times.items():
        res[f"{name}_ms"] = t["ms"]
        res[f"{name}_cpu_ms"] = t["cpu_ms"]
    for name in rows:
        res[f"{name}_to_adam"] = times[name]["ms"] / times["adam"]["ms"]
        res[f"{name}_to_adam_best"] = times[name]["best_ms"] / times["adam"]["best_ms"]
        res[f"{name}_to_adam_cpu"] = times[name]["cpu_ms"] / times["adam"]["cpu_ms"]
    res["state_bytes_per_param"] = {
        name: round(state_bytes_per_param(tx, params), 2) for name, tx in txs.items()
    }
    res["backend"] = jax.default_backend()
    try:
        res.update(torch_step_overhead(args.repeats, args.torch_threads))
    except Exception as err:  # the JAX numbers above still stand
        res["torch"] = f"failed: {type(err).__name__}: {err}"
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
