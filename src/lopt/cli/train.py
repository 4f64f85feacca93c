"""``lopt train``: train one task with one optimizer, with a progress bar and a record.

Writes ``OUT/config.json`` (arguments, seed, resolved task, optimizer and the weights it used,
versions; a ``result`` block is added when the run ends), ``OUT/metrics.jsonl`` (one JSON object
per logged step: ``step`` = updates done, ``loss`` = mean training minibatch loss over the steps
since the previous record, ``last_loss``, and ``eval_loss`` -- plus ``eval_accuracy`` for
classification tasks -- where the task has a held-out split, every ``--eval-every`` steps) and
``OUT/loss.png``. ``--out`` follows :mod:`lopt.utils.rundir` (new or empty, or ``--overwrite``).

The loop is :func:`lopt.training.train_curves` (the same one ``lopt evaluate`` runs). A
non-finite training loss stops the run, reports the step, keeps what was written, and exits with
status 1. Ctrl-C stops at the end of the current chunk of steps, writes everything done so far
(result ``interrupted``) and exits with status 130.
"""

from __future__ import annotations

import json
import math
import sys

from lopt.training.optimizers import DEFAULT_LR, LEARNED

#: Kept for callers of the old name: default learning rates of the hand-designed optimizers.
OPTAX_DEFAULT_LR = DEFAULT_LR
OPTIMIZER_CHOICES = (*DEFAULT_LR, *LEARNED)


def add_parser(sub) -> None:
    from lopt.cli.main import HelpFormatter
    from lopt.utils.rundir import add_run_dir_flags

    p = sub.add_parser(
        "train",
        help="train a task with an optimizer; writes metrics.jsonl, config.json, loss.png",
        formatter_class=HelpFormatter,
        description="Train one task with one optimizer. Writes OUT/metrics.jsonl (step, loss: "
        "mean training loss since the previous record, last_loss, eval_loss and, for "
        "classification tasks, eval_accuracy on the held-out split), OUT/config.json (settings, "
        "weights used, result) and OUT/loss.png. A non-finite loss stops the run with exit "
        "status 1; Ctrl-C stops after the current chunk of steps, keeps what was done and exits "
        "with status 130.",
    )
    p.add_argument("--task", required=True, help="registered task name (names: see lopt tasks)")
    p.add_argument(
        "--optimizer",
        required=True,
        help="adam | sgd | momentum | adamw | prodigy | star | blackbox | PATH to saved "
        "meta-params; a STAR may end in :step_scale=S (its whole step times S)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for hand-designed optimizers (defaults: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + "); not allowed with learned optimizers",
    )
    p.add_argument("--steps", type=int, required=True, help="number of training steps")
    p.add_argument("--seed", type=int, default=0, help="seed for task sampling, init and data")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--log-every", type=int, default=10, help="steps per metrics record")
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="steps between held-out evaluations (rounded up to a multiple of --log-every; "
        "default: about 20 evaluations per run)",
    )
    add_run_dir_flags(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _validate(args):
    from lopt.cli.main import UsageError
    from lopt.tasks import names

    if args.task not in names():
        raise UsageError(f"unknown task {args.task!r}; valid tasks: {', '.join(names())}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.log_every < 1:
        raise UsageError(f"--log-every must be >= 1, got {args.log_every}")
    if args.eval_every is not None and args.eval_every < 1:
        raise UsageError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")


def _resolve_optimizer(args):
    from lopt.cli.main import UsageError
    from lopt.training.optimizers import OptimizerSpecError, resolve

    try:
        return resolve(args.optimizer, args.lr)
    except OptimizerSpecError as err:
        raise UsageError(str(err).replace("a learning rate", "--lr")) from None


class _Recorder:
    """Turns per-step losses into ``metrics.jsonl`` records of ``log_every`` steps each,
    written as soon as they are complete (an interrupted run keeps everything up to there)."""

    def __init__(self, fh, log_every: int, total: int):
        self.fh, self.log_every, self.total = fh, log_every, total
        self.records: list[dict] = []
        self.pending: list[float] = []
        self.done = 0  # steps whose losses were consumed
        self.bad_step: int | None = None
        self.eval0: float | None = None
        self.accuracy: tuple[int, float | None] | None = None  # (step, held-out accuracy)

    def on_eval(self, done: int, row: dict) -> None:
        if "eval_accuracy" in row:
            self.accuracy = (done, _finite(row["eval_accuracy"][0, 0]))

    def on_chunk(self, done: int, losses, evals) -> None:
        losses = losses[0, 0]
        ev = None if evals is None else _finite(evals[0, 0])
        if done == 0:  # before the first step: the held-out loss at initialization
            self.eval0 = ev
            return
        new: list[dict] = []
        if not self.records:  # step 0: the first training loss, at the initial parameters
            zero = {"step": 0, "loss": _finite(losses[0])}
            if evals is not None or self.eval0 is not None:
                zero["eval_loss"] = self.eval0
                self._accuracy(zero, 0)
            new.append(zero)
        for value in losses:
            value = float(value)
            if not math.isfinite(value):
                self.bad_step = self.done
                if self.pending:
                    new.append(self._record())
                new.append({"step": self.done, "loss": None, "non_finite": True})
                break
            self.pending.append(value)
            self.done += 1
            if self.done % self.log_every == 0 or self.done == self.total:
                new.append(self._record())
        if evals is not None and new and new[-1]["step"] == done and self.bad_step is None:
            new[-1]["eval_loss"] = ev
            self._accuracy(new[-1], done)
        for rec in new:
            self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        self.records += new

    def _accuracy(self, rec: dict, step: int) -> None:
        if self.accuracy is not None and self.accuracy[0] == step:
            rec["eval_accuracy"] = self.accuracy[1]

    def _record(self) -> dict:
        rec = {
            "step": self.done,
            "loss": sum(self.pending) / len(self.pending),
            "last_loss": self.pending[-1],
        }
        self.pending = []
        return rec


def run(args) -> int:
    from lopt.utils.rundir import check_run_dir

    _validate(args)
    check_run_dir(args.out, command="train", overwrite=args.overwrite)  # before loading weights
    spec = _resolve_optimizer(args)
    from lopt.utils.interrupt import graceful_interrupt

    # from here on the first Ctrl-C only asks the run to stop at its next safe point
    with graceful_interrupt(
        "lopt train: stopping after the current chunk (Ctrl-C again to abort)"
    ) as stop:
        return _train(args, spec, stop)


def _train(args, spec, stop) -> int:
    from tqdm import tqdm

    import lopt
    from lopt.plotting import training_curve
    from lopt.tasks import get, sample_task
    from lopt.training.loop import choose_chunk, seed_keys, stack_variants, train_curves
    from lopt.utils.io import atomic_write_json
    from lopt.utils.provenance import environment_info
    from lopt.utils.rundir import prepare_run_dir

    out = prepare_run_dir(args.out, command="train", overwrite=args.overwrite)
    task = sample_task(get(args.task), seed_keys(args.seed)[0])
    log_every = args.log_every
    eval_every = args.eval_every or max(1, math.ceil(args.steps / 20))
    eval_every = math.ceil(eval_every / log_every) * log_every
    has_eval = task.eval_loss is not None

    config = {
        "command": "train",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "task": args.task,
        "task_resolved": task.name,
        "optimizer": args.optimizer,
        "optimizer_kind": spec.kind,
        "optimizer_resolved": spec.describe(),
        "lr": spec.learning_rate,
        "seed": args.seed,
        "eval_every": eval_every if has_eval else None,
        "lopt_version": lopt.__version__,
        "environment": environment_info(),
    }
    atomic_write_json(out / "config.json", config)

    with open(out / "metrics.jsonl", "w") as fh:
        rec = _Recorder(fh, log_every, args.steps)
        bar = tqdm(total=args.steps, disable=args.no_progress, file=sys.stderr, unit="step")

        def on_chunk(done, losses, evals):
            rec.on_chunk(done, losses, evals)
            bar.update(losses.shape[-1])
            last = next((r for r in reversed(rec.records) if r.get("loss") is not None), None)
            if last is not None:
                bar.set_postfix(loss=f"{last['loss']:.4g}", refresh=False)

        def on_compile():
            print(f"lopt train: compiling {task.name} with {spec.label} ...", file=sys.stderr,
                  flush=True)

        curves = train_curves(
            task,
            spec.make_tx,
            stack_variants([spec.theta]),
            [args.seed],
            args.steps,
            eval_every=eval_every if has_eval else None,
            chunk=choose_chunk(args.steps, eval_every),
            stop_on_nonfinite="any",
            should_stop=stop.is_set,
            on_chunk=on_chunk,
            on_compile=on_compile,
            on_eval=rec.on_eval,
            xla_options=spec.xla_options,
        )
        bar.close()
    records = rec.records

    status = curves.stopped or "ok"
    good = [r for r in records if r.get("loss") is not None]
    last_eval = [r for r in records if r.get("eval_loss") is not None]
    last_acc = [r for r in records if r.get("eval_accuracy") is not None]
    steps_done = rec.bad_step if rec.bad_step is not None else curves.steps_done
    config["result"] = {
        "status": status,
        "steps_done": steps_done,
        "non_finite_step": rec.bad_step,
        "final_loss": good[-1]["loss"] if good else None,
        "final_eval_loss": last_eval[-1]["eval_loss"] if last_eval else None,
        "final_eval_accuracy": last_acc[-1]["eval_accuracy"] if last_acc else None,
        "wall_s": round(curves.wall_s, 3),
        "compile_s": round(curves.compile_s, 3),
    }
    atomic_write_json(out / "config.json", config)
    training_curve(records, f"{task.name} / {spec.label}", out / "loss.png")
    if status == "non_finite":
        print(
            f"lopt train: loss became non-finite at step {rec.bad_step}; stopped. "
            f"Records up to that step are in {out}",
            file=sys.stderr,
        )
        return 1
    res = config["result"]
    if status == "interrupted":
        print(
            f"lopt train: interrupted after {steps_done} of {args.steps} steps; metrics, "
            f"config.json (result: interrupted) and loss.png up to there are in {out}",
            file=sys.stderr,
        )
        return 130
    msg = f"final loss {res['final_loss']:.4g}"
    if res["final_eval_loss"] is not None:
        msg += f", held-out loss {res['final_eval_loss']:.4g}"
    if res["final_eval_accuracy"] is not None:
        msg += f", held-out accuracy {res['final_eval_accuracy']:.3f}"
    print(f"lopt train: {args.steps} steps in {curves.wall_s:.1f}s; {msg}; wrote {out}")
    return 0


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
