"""``lopt train``: train one task with one optimizer, with a progress bar and a record.

Writes ``OUT/config.json`` (arguments, seed, resolved task and learning rate, versions; a
``result`` block is added when the run ends), ``OUT/metrics.jsonl`` (one JSON object per
logged step: ``step`` = updates done, ``loss`` = mean training minibatch loss over the
steps since the previous record, ``last_loss``, and ``eval_loss`` where the task has a
held-out split, every ``--eval-every`` steps) and ``OUT/loss.png``.

Training runs as jitted ``lax.scan`` chunks of ``--log-every`` steps; batches are drawn on
device from per-step keys ``fold_in(data_key, step)``, so results do not depend on the
chunking. A non-finite training loss stops the run, reports the step, keeps what was
written, and exits with status 1.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

#: Hand-designed optimizers (``lopt.optimizers.hand_designed``) and their default learning
#: rates when --lr is omitted.
OPTAX_DEFAULT_LR: dict[str, float] = {
    "adam": 1e-3,
    "sgd": 0.1,
    "momentum": 0.01,  # heavy ball, momentum 0.9
    "adamw": 1e-3,  # weight decay 1e-4
}
LEARNED = ("star", "blackbox")
OPTIMIZER_CHOICES = (*OPTAX_DEFAULT_LR, *LEARNED)
#: Steps per jitted call (rounded to a multiple of --log-every).
_CHUNK_TARGET = 250


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a task with an optimizer; writes metrics.jsonl, config.json, loss.png",
        description="Train one task with one optimizer. Writes OUT/metrics.jsonl (step, loss: "
        "mean training loss since the previous record, last_loss, eval_loss), OUT/config.json "
        "and OUT/loss.png. A non-finite loss stops the run with exit status 1.",
    )
    p.add_argument("--task", required=True, help="registered task name (see `lopt tasks`)")
    p.add_argument(
        "--optimizer",
        required=True,
        help="adam | sgd | momentum | adamw | star | blackbox | PATH to saved meta-params",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for hand-designed optimizers (defaults: "
        + ", ".join(f"{k} {v:g}" for k, v in OPTAX_DEFAULT_LR.items())
        + "); not allowed with learned optimizers",
    )
    p.add_argument("--steps", type=int, required=True, help="number of training steps")
    p.add_argument("--seed", type=int, default=0, help="seed for task sampling, init and data")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics record")
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="steps between held-out evaluations (rounded up to a multiple of --log-every; "
        "default: about 20 evaluations per run)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _validate(args):
    from lopt.cli.main import UsageError
    from lopt.tasks import names

    if args.task not in names():
        raise UsageError(f"unknown task {args.task!r}; valid tasks: {', '.join(names())}")
    if args.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {args.steps}")
    if args.log_every < 1:
        raise UsageError(f"--log-every must be >= 1, got {args.log_every}")
    if args.eval_every is not None and args.eval_every < 1:
        raise UsageError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    opt = args.optimizer
    if opt in OPTAX_DEFAULT_LR:
        return "optax"
    kind = "learned" if opt in LEARNED else None
    if kind is None:
        if not Path(opt).is_file():
            raise UsageError(
                f"unknown optimizer {opt!r}: not one of {', '.join(OPTIMIZER_CHOICES)} "
                "and not a path to a meta-parameters file"
            )
        kind = "path"
    if args.lr is not None:
        raise UsageError(
            f"--lr does not apply to the learned optimizer {opt!r}: it sets its own step "
            f"sizes from its meta-parameters; --lr is for {', '.join(OPTAX_DEFAULT_LR)}"
        )
    return kind


def _make_optimizer(args, kind):
    """Returns (optax transformation with extra-args support, learning rate or None)."""
    import optax

    if kind == "optax":
        from lopt.optimizers import hand_designed

        lr = args.lr if args.lr is not None else OPTAX_DEFAULT_LR[args.optimizer]
        return optax.with_extra_args_support(hand_designed(args.optimizer, lr)), lr
    import lopt

    if kind == "learned":
        tx = getattr(lopt, args.optimizer)()
    else:
        from lopt.cli.main import UsageError

        try:
            theta, opt = lopt.load_meta_params(args.optimizer)
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"cannot load meta-parameters from {args.optimizer}: {err}") from err
        tx = opt.as_optax(theta)
    return optax.with_extra_args_support(tx), None


def _plot(path: Path, records: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from lopt.utils.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", ms=3, label="held-out loss")
    values = [v for _, v in train + evals]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def run(args) -> int:
    kind = _validate(args)

    import json

    import jax
    import jax.numpy as jnp
    import optax
    from tqdm import tqdm

    import lopt
    from lopt.tasks import get, sample_task
    from lopt.utils.io import atomic_write_json
    from lopt.utils.provenance import environment_info

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tx, lr = _make_optimizer(args, kind)

    root = jax.random.key(args.seed)
    k_task, k_init, k_data, k_eval = jax.random.split(root, 4)
    task = sample_task(get(args.task), k_task)
    log_every = args.log_every
    eval_every = args.eval_every or max(1, math.ceil(max(args.steps, 1) / 20))
    eval_every = math.ceil(eval_every / log_every) * log_every

    config = {
        "command": "train",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "task": args.task,
        "task_resolved": task.name,
        "optimizer": args.optimizer,
        "optimizer_kind": kind,
        "lr": lr,
        "seed": args.seed,
        "eval_every": eval_every if task.eval_loss is not None else None,
        "lopt_version": lopt.__version__,
        "environment": environment_info(),
    }
    atomic_write_json(out / "config.json", config)

    total = args.steps
    has_eval = task.eval_loss is not None

    def one_step(carry, step):
        params, state = carry
        batch = task.sample_batch(jax.random.fold_in(k_data, step))
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        updates, state = tx.update(grads, state, params, loss=loss)
        params = optax.apply_updates(params, updates)
        if has_eval:  # held-out loss after this update, only at evaluation steps
            due = ((step + 1) % eval_every == 0) | (step + 1 == total)
            ev = jax.lax.cond(
                due,
                lambda p: task.eval_loss(p, k_eval).astype(jnp.float32),
                lambda p: jnp.float32(jnp.nan),
                params,
            )
        else:
            ev = jnp.float32(jnp.nan)
        return (params, state), (loss, ev)

    def chunk(params, state, start, length):
        steps = start + jnp.arange(length)
        (params, state), (losses, evals) = jax.lax.scan(one_step, (params, state), steps)
        return params, state, losses, evals

    chunk = jax.jit(chunk, static_argnums=3, donate_argnums=(0, 1))
    first_loss = jax.jit(lambda p: task.loss(p, task.sample_batch(jax.random.fold_in(k_data, 0))))

    params = task.init(k_init)
    state = tx.init(params)
    # Several log intervals per jitted call: fewer host round trips, same records.
    chunk_len = log_every * max(1, _CHUNK_TARGET // log_every)
    records: list[dict] = []
    status, bad_step = "ok", None
    t0 = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as fh:

        def write(rec):
            records.append(rec)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()

        rec = {"step": 0, "loss": _finite(first_loss(params))}
        if has_eval:
            rec["eval_loss"] = _finite(jax.jit(task.eval_loss)(params, k_eval))
        write(rec)
        bar = tqdm(total=total, disable=args.no_progress, file=sys.stderr, unit="step")
        done = 0
        while done < total and status == "ok":
            n = min(chunk_len, total - done)
            params, state, losses, evals = chunk(params, state, jnp.asarray(done, jnp.int32), n)
            losses, evals = jax.device_get((losses, evals))
            for lo in range(0, n, log_every):
                seg = losses[lo : lo + log_every]
                bad = [i for i, v in enumerate(seg) if not math.isfinite(float(v))]
                if bad:
                    bad_step = done + lo + bad[0]
                    status = "non_finite"
                    if bad[0] > 0:
                        good = seg[: bad[0]]
                        write({"step": bad_step, "loss": float(good.mean()),
                               "last_loss": float(good[-1])})
                    write({"step": bad_step, "loss": None, "non_finite": True})
                    break
                step = done + lo + len(seg)
                rec = {"step": step, "loss": float(seg.mean()), "last_loss": float(seg[-1])}
                ev = float(evals[lo + len(seg) - 1])
                if has_eval and (step % eval_every == 0 or step == total):
                    rec["eval_loss"] = ev if math.isfinite(ev) else None
                write(rec)
            if status == "ok":
                done += n
                bar.update(n)
                bar.set_postfix(loss=f"{records[-1]['loss']:.4g}", refresh=False)
        bar.close()
    wall = time.perf_counter() - t0

    last = [r for r in records if r.get("loss") is not None]
    last_eval = [r for r in records if r.get("eval_loss") is not None]
    config["result"] = {
        "status": status,
        "steps_done": bad_step if bad_step is not None else args.steps,
        "non_finite_step": bad_step,
        "final_loss": last[-1]["loss"] if last else None,
        "final_eval_loss": last_eval[-1]["eval_loss"] if last_eval else None,
        "wall_s": round(wall, 3),
    }
    atomic_write_json(out / "config.json", config)
    _plot(out / "loss.png", records, f"{task.name} / {Path(args.optimizer).name}")
    if status != "ok":
        print(
            f"lopt train: loss became non-finite at step {bad_step}; stopped. "
            f"Records up to that step are in {out}",
            file=sys.stderr,
        )
        return 1
    res = config["result"]
    msg = f"final loss {res['final_loss']:.4g}"
    if res["final_eval_loss"] is not None:
        msg += f", held-out loss {res['final_eval_loss']:.4g}"
    print(f"lopt train: {args.steps} steps in {wall:.1f}s; {msg}; wrote {out}")
    return 0
