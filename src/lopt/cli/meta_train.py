"""``lopt meta-train``: meta-train STAR or the blackbox LO with PES / ES / truncated backprop.

Precedence of settings: built-in defaults < ``--config FILE`` (TOML) < flags. The whole config
is validated before any JAX work starts, so a run that cannot work fails in a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: checkpoint file names, kept here so that ``lopt --help`` does not import JAX (the trainer
#: module defines the same names; a test checks they agree)
CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pkl"
#: the meta-training figure: meta-loss and held-out evaluation against outer step
FIGURE = "meta_training.png"

#: Every config field exposed as a flag: ``(field, old spellings kept as aliases, argparse
#: keywords, help)``. The flag is the field's name with dashes (``num_slots`` ->
#: ``--num-slots``), so a TOML key and its flag are the same words. Flags default to ``None``
#: ("not given": the config file or the built-in default applies); help shows the built-in one.
FLAGS: tuple[tuple[str, tuple[str, ...], dict, str], ...] = (
    ("optimizer", (), {"choices": ("star", "blackbox")}, "learned optimizer to meta-train"),
    ("tasks", (), {}, "task or task family to meta-train on (names: see lopt tasks)"),
    ("outer_steps", (), {"type": int},
     "total outer (meta-gradient) steps; a resumed run continues up to this number"),
    ("estimator", (), {"choices": ("pes", "es", "tbptt")},
     "meta-gradient estimator: pes = persistent evolution strategies (unbiased over whole "
     "inner runs), es = antithetic evolution strategies over one truncation, tbptt = truncated "
     "backpropagation through time"),
    ("meta_loss", (), {"choices": ("normalized", "log")},
     "per-step meta-loss: the task's bounded (normalized) loss, or its logarithm (relative "
     "progress counts)"),
    ("meta_loss_floor", (), {"type": float},
     "with the log meta-loss: losses below this count as this (progress below it is ignored)"),
    ("sigma", (), {"type": float}, "standard deviation of the ES/PES perturbation of theta"),
    ("truncation", (), {"type": int}, "inner steps per truncation (one outer step)"),
    ("horizon_min", (), {"type": int}, "shortest inner run, in inner steps"),
    ("horizon_max", (), {"type": int},
     "longest inner run (lengths are drawn log-uniformly in [min, max])"),
    ("num_slots", ("--slots",), {"type": int},
     "inner runs (task slots) advanced in parallel each outer step"),
    ("antithetic", (), {"action": "BooleanOptionalAction"},
     "ES/PES: evaluate +eps and -eps on the same data"),
    ("random_offsets", (), {"action": "BooleanOptionalAction"},
     "start each slot at a random point of its first run so slots are out of phase"),
    ("outer_lr", ("--lr",), {"type": float}, "learning rate of the outer Adam on theta"),
    ("lr_schedule", (), {"choices": ("constant", "cosine")}, "outer learning-rate schedule"),
    ("warmup_steps", (), {"type": int}, "linear warm-up of the outer learning rate, in steps"),
    ("decay_steps", (), {"type": int}, "cosine decay length in outer steps"),
    ("clip_norm", ("--clip",), {"type": float},
     "clip the meta-gradient to this global norm (0: no clipping)"),
    ("eval_every", (), {"type": int},
     "outer steps between held-out evaluations (0: none); the best theta is kept"),
    ("eval_tasks", (), {"type": int}, "fixed held-out task draws per evaluation"),
    ("eval_horizon", (), {"type": int}, "inner steps of each evaluation run"),
    ("eval_on", (), {},
     "draw the held-out tasks from this task, family or mixture instead of the training "
     "tasks (names: see lopt tasks), so that the kept theta is the one that generalizes"),
    ("checkpoint_every", (), {"type": int}, "outer steps between checkpoints"),
    ("seed", (), {"type": int}, "the one seed every random number of the run derives from"),
)

#: Kept for callers of the old name: flag dest -> config field (now always the same word).
FIELDS = {field: field for field, *_ in FLAGS}


def _config_default(field: str):
    import dataclasses

    from lopt.metatrain.config import MetaTrainConfig

    for f in dataclasses.fields(MetaTrainConfig):
        if f.name == field and f.default is not dataclasses.MISSING:
            return f.default
    return None


def add_parser(sub) -> None:
    import argparse

    from lopt.cli.main import HelpFormatter
    from lopt.utils.rundir import add_run_dir_flags

    p = sub.add_parser(
        "meta-train",
        help="meta-train a learned optimizer with PES, ES or TBPTT; writes theta.safetensors",
        formatter_class=HelpFormatter,
        description=(
            "Meta-train STAR or the blackbox LO on a task family with persistent evolution "
            "strategies (PES), antithetic evolution strategies (ES) or truncated "
            "backpropagation through time (TBPTT). Writes DIR/config.json, DIR/metrics.jsonl, "
            f"DIR/eval.jsonl, DIR/{FIGURE}, DIR/{CHECKPOINT} (data only), "
            "DIR/best.safetensors (best fixed held-out evaluation) and DIR/theta.safetensors "
            "(final). Settings: built-in defaults < --config FILE < flags; every TOML key is "
            "the flag's name with underscores (num_slots = 4 is --num-slots 4). Ctrl-C stops "
            "after the current outer step and saves a checkpoint; --resume continues it."
        ),
    )
    p.add_argument("--out", required=True, help="output directory (new, empty, or see --resume)")
    p.add_argument("--config", help="TOML config file: flat keys named like the flags, plus an "
                   "[optimizer_kwargs] table")
    for field, aliases, kwargs, text in FLAGS:
        kwargs = dict(kwargs)
        if kwargs.get("action") == "BooleanOptionalAction":
            kwargs["action"] = argparse.BooleanOptionalAction
        default = _config_default(field)
        if field in ("optimizer", "tasks"):
            text += " (required unless the --config file sets it)"
        elif default is not None:
            text += f" (default: {default})"
        flags = ["--" + field.replace("_", "-"), *aliases]
        p.add_argument(*flags, dest=field, default=None, help=text, **kwargs)
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="optimizer switch, e.g. --opt step_multiplier=1e-4 (value parsed as JSON); "
        "repeatable (default: none)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=1,
        metavar="N",
        help="split the CPU into N devices and shard the slots over them (0: one per core); "
        "measured +45%% inner steps/s for STAR with 2 on a 2-core machine. Needs JAX not yet "
        "started in this process (always true for a command-line run)",
    )
    add_run_dir_flags(p, resumable=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_flags(p)
    p.set_defaults(func=run)


def add_distributed_flags(p) -> None:
    d = p.add_argument_group(
        "distributed meta-training on Ray workers (needs pip install -e '.[distributed]'; "
        "see docs/distributed.md)"
    )
    d.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="compute the meta-gradient estimates on N Ray worker actors (--num-slots is the "
        "total, split over them); without it everything runs in this process",
    )
    d.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="join this Ray cluster (auto, or HEAD_IP:6379); without it a local Ray instance "
        "sized to this machine is started",
    )
    d.add_argument(
        "--staleness",
        type=int,
        default=0,
        help="largest staleness, in outer steps, of an estimate that is still applied; older "
        "ones are dropped (0: synchronous, every worker computes on the current theta) "
        "(default: 0)",
    )
    d.add_argument(
        "--estimates-per-step",
        type=int,
        metavar="K",
        help="worker estimates pooled into one outer step (default: one per worker)",
    )
    d.add_argument(
        "--cpus-per-worker", type=int, default=1, help="CPU cores per worker (default: 1)"
    )
    d.add_argument(
        "--no-pin-cores",
        action="store_true",
        help="do not pin each worker to free cores of its node (for nodes shared with other "
        "heavy work)",
    )
    d.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="how often one dead worker is re-created before the run stops (default: 3)",
    )
    d.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="node-local compilation cache for the workers (default: lopt's own, "
        "$LOPT_CACHE/jax, unless LOPT_NO_COMPILE_CACHE=1)",
    )


def use_cpu_devices(n: int) -> bool:
    """Ask XLA for ``n`` host devices (``0``: one per core) so the slot axis can be sharded.

    ``XLA_FLAGS`` is read when JAX starts its backends, so this only works before that; returns
    whether the setting took effect (it is left alone when XLA_FLAGS already sets a count).
    """
    import os

    if n == 1:
        return False
    n = n or (os.cpu_count() or 1)
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return True


def parse_switches(items: list[str]) -> dict:
    from lopt.cli.main import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--opt expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_config(args):
    """The validated :class:`MetaTrainConfig` of these arguments (no JAX work)."""
    from lopt.cli.main import UsageError
    from lopt.metatrain.config import MetaTrainConfig, merge

    overrides = {field: getattr(args, field) for field in FIELDS}
    switches = parse_switches(args.opt)
    if switches:
        overrides["optimizer_kwargs"] = switches
    try:
        if args.config:
            return MetaTrainConfig.from_toml(args.config, **overrides)
        return MetaTrainConfig.from_dict(merge({}, overrides))
    except FileNotFoundError as err:
        raise UsageError(f"config file not found: {err.filename}") from None
    except (ValueError, TypeError) as err:
        raise UsageError(f"invalid meta-training config: {err}") from None


def build_source(args, config):
    """The Ray estimate source of ``--workers`` (``None`` without it); no Ray work yet."""
    from lopt.cli.main import UsageError

    if args.workers is None:
        given = [
            flag
            for flag, value, default in (
                ("--ray-address", args.ray_address, None),
                ("--staleness", args.staleness, 0),
                ("--estimates-per-step", args.estimates_per_step, None),
                ("--cpus-per-worker", args.cpus_per_worker, 1),
                ("--no-pin-cores", args.no_pin_cores, False),
                ("--max-restarts", args.max_restarts, 3),
                ("--compile-cache", args.compile_cache, None),
            )
            if value != default
        ]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --workers N")
        return None
    from lopt.distributed.config import DistributedConfig

    try:
        dist = DistributedConfig(
            workers=args.workers,
            staleness=args.staleness,
            estimates_per_step=args.estimates_per_step,
            cpus_per_worker=args.cpus_per_worker,
            pin_cores=not args.no_pin_cores,
            max_restarts=args.max_restarts,
            address=args.ray_address,
            compile_cache_dir=args.compile_cache or current_compile_cache(),
        )
        dist.worker_slots(config.num_slots)
        from lopt.distributed.learner import RayEstimates, check_fits_locally, require_ray

        check_fits_locally(dist)
        require_ray()
    except ValueError as err:
        raise UsageError(f"invalid distributed setting: {err}") from None
    except ImportError as err:
        raise UsageError(str(err)) from None
    return RayEstimates(dist)


def current_compile_cache() -> str | None:
    """The persistent compilation cache this process uses (``lopt.cli.main``), if any."""
    import jax

    return jax.config.jax_compilation_cache_dir or None


def run(args) -> int:
    from lopt.cli.main import UsageError

    config = build_config(args)
    source = build_source(args, config)
    if args.cpu_devices < 0:
        raise UsageError(f"--cpu-devices must be >= 0, got {args.cpu_devices}")
    if args.config is None and (args.optimizer is None or args.tasks is None):
        raise UsageError("give --optimizer {star,blackbox} and --tasks NAME, or a --config FILE")
    if args.resume and (Path(args.out) / LEGACY_CHECKPOINT).is_file() and not (
        Path(args.out) / CHECKPOINT
    ).is_file():
        raise UsageError(
            f"{args.out} holds a pickle checkpoint ({LEGACY_CHECKPOINT}) of an earlier lopt, "
            "which is no longer loaded because unpickling can run code; start a new run with "
            "--overwrite"
        )
    from lopt.utils.interrupt import graceful_interrupt

    # from here on the first Ctrl-C only asks the run to stop at its next safe point (the
    # trainer checks the same flag)
    with graceful_interrupt(
        "lopt meta-train: stopping after the current outer step (Ctrl-C again to abort)"
    ):
        return _meta_train(args, config, source)


def _meta_train(args, config, source=None) -> int:
    from lopt.cli.main import UsageError
    from lopt.utils.rundir import check_run_dir, prepare_run_dir

    where = dict(command="meta-train", resume=args.resume, overwrite=args.overwrite,
                 resumable=CHECKPOINT)
    check_run_dir(args.out, **where)  # before anything slow
    if args.cpu_devices != 1 and not use_cpu_devices(args.cpu_devices):
        print("lopt: --cpu-devices ignored: JAX already started or XLA_FLAGS sets a count")
    from lopt.metatrain.checkpoint import CheckpointError
    from lopt.metatrain.trainer import MetaTrainer
    from lopt.plotting import meta_training_curves

    try:
        trainer = MetaTrainer(config, args.out, source=source)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = prepare_run_dir(args.out, **where)
    title = f"meta-training {config.optimizer} on {config.tasks} ({config.estimator})"

    def write_figure() -> None:
        meta_training_curves(
            read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "eval.jsonl"), title,
            out / FIGURE,
        )

    def on_step(step: int, record: dict) -> None:
        if step % config.checkpoint_every == 0:  # redrawn with each checkpoint
            write_figure()

    print(
        f"lopt meta-train: compiling the {config.estimator} outer step of {config.optimizer} on "
        f"{config.tasks}"
        + (f" in {args.workers} Ray workers" if args.workers else "")
        + " (can take a minute; Ctrl-C stops cleanly) ...",
        file=sys.stderr, flush=True,
    )
    try:
        result = trainer.run(resume=args.resume, progress=not args.no_progress,
                             callback=on_step)
    except (FileExistsError, CheckpointError, TimeoutError) as err:
        raise UsageError(str(err)) from None
    except KeyboardInterrupt:
        write_figure()
        done = read_jsonl(out / "metrics.jsonl")
        reached = done[-1]["outer_step"] if done else trainer.checkpoint_step or 0
        files = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
        if trainer.checkpoint_step is not None:
            print(
                f"lopt meta-train: interrupted at outer step {reached} of {config.outer_steps}; "
                f"the checkpoint holds outer step {trainer.checkpoint_step} (continue with "
                f"--resume); {out} holds {files}",
                file=sys.stderr,
            )
        else:
            print(
                f"lopt meta-train: interrupted before a checkpoint was written, nothing to "
                f"resume; {out} holds {files or 'nothing'} (start again with --overwrite)",
                file=sys.stderr,
            )
        return 130
    write_figure()
    best = result["best"]
    last = result["last"]
    print(
        json.dumps(
            {
                "out": str(out),
                "outer_step": result["outer_step"],
                "meta_loss": last.get("meta_loss"),
                "best_eval_loss": best.get("eval_loss"),
                "best_outer_step": best.get("outer_step"),
                "theta": f"{out}/theta.safetensors",
                "figure": f"{out}/{FIGURE}",
            }
        )
    )
    return 0


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (missing file: none; a line cut short: skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
