"""Milliseconds per update: optax.adam vs Blackbox vs STAR on a ~1M-parameter MLP, and the same
for the PyTorch front-end (``lopt.torch.STAR`` / ``Blackbox`` vs ``torch.optim.Adam``).

Prints one JSON object. Ratios (``star_to_adam``, ``blackbox_to_adam``, ``torch_star_to_adam``,
``torch_blackbox_to_adam``) are measured in the same process, so they compare like with like on
whatever machine runs this. The torch optimizers are stepped in turn within each repeat, so a
load spike on a shared machine hits all of them; the torch part is skipped, with a note, when
torch is not installed.

    python benchmarks/step_overhead.py [--repeats 50] [--torch-threads N]
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
    res.update(torch_step_overhead(args.repeats, args.torch_threads))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
