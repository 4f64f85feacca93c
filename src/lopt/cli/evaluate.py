"""``lopt evaluate``: optimizers against a learning-rate-tuned baseline on a suite of tasks.

Writes ``OUT/results.json``, ``OUT/report.md``, figures (``<suite>_curves.png``,
``<suite>_speedup.png``), ``OUT/config.json`` and the finished cells in ``OUT/cells/``.
Re-running with the same ``--out`` skips finished cells (an interrupted evaluation continues);
Ctrl-C stops after the current chunk of steps and keeps every finished cell.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG = "config.json"


def _suite_help() -> str:
    from lopt.evaluate.suites import SUITE_DESCRIPTIONS, SUITES

    return "; ".join(
        f"{name}: {SUITE_DESCRIPTIONS[name]} ({len(SUITES[name])} tasks)" for name in SUITES
    )


def add_parser(sub) -> None:
    from lopt.cli.main import HelpFormatter
    from lopt.utils.rundir import add_run_dir_flags

    p = sub.add_parser(
        "evaluate",
        help="compare optimizers with learning-rate-tuned Adam on a suite of tasks",
        description=(
            "Train every task of a suite with each optimizer and with Adam at every learning "
            "rate of a grid (1e-4 ... 1e-1), on the same seeds, and report each optimizer's "
            "speedup: the steps the best Adam needs to reach the optimizer's final training "
            "loss, divided by the optimizer's steps. Suites: " + _suite_help() + "."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--optimizer",
        action="append",
        required=True,
        metavar="NAME_OR_PATH",
        help="star | blackbox | adam | sgd | momentum | adamw | prodigy | PATH to saved "
        "meta-parameters; a STAR may end in :step_scale=S (its whole step times S) "
        "(repeat the flag to compare several)",
    )
    p.add_argument(
        "--suite",
        action="append",
        default=None,
        help="suite name (repeatable); default: in-distribution unless --tasks is given",
    )
    p.add_argument("--tasks", default=None, help="custom comma list of tasks (NAME or NAME@K)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per task for --tasks (default: the meta-training horizon)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per task and optimizer")
    p.add_argument("--cap", type=float, default=4.0,
                   help="the baseline runs cap x the steps; larger speedups are '>= cap'")
    p.add_argument("--baseline", default="adam",
                   help="hand-designed optimizer tuned over the grid (adam, adamw, momentum, sgd)")
    p.add_argument("--out", required=True,
                   help="output folder; an evaluation already there is continued")
    add_run_dir_flags(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def build_suites(args) -> dict:
    from lopt.cli.main import UsageError
    from lopt.evaluate.suites import META_TRAINING_HORIZON, SuiteError, parse_tasks, suite

    try:
        suites = {name: suite(name) for name in (args.suite or [])}
        if args.tasks:
            steps = args.steps or META_TRAINING_HORIZON
            if steps < 1:
                raise UsageError(f"--steps must be >= 1, got {steps}")
            suites["custom"] = parse_tasks(args.tasks, steps)
        elif args.steps is not None:
            raise UsageError("--steps applies to a custom --tasks list only")
    except SuiteError as err:
        raise UsageError(str(err)) from None
    return suites or {"in-distribution": suite("in-distribution")}


def resolve_optimizers(names: list[str]):
    from lopt.cli.main import UsageError
    from lopt.training.optimizers import OptimizerSpecError, resolve

    specs = []
    for name in names:
        try:
            specs.append(resolve(name))
        except OptimizerSpecError as err:
            raise UsageError(str(err)) from None
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UsageError(f"optimizer given twice (or two files with the same name): {dupes}")
    return specs


def run(args) -> int:
    from lopt.cli.main import UsageError
    from lopt.evaluate.harness import EvalSettings

    suites = build_suites(args)
    try:
        settings = EvalSettings(seeds=args.seeds, cap=args.cap, baseline=args.baseline)
    except ValueError as err:
        raise UsageError(str(err)) from None
    from lopt.utils.rundir import check_run_dir, prepare_continuable_run_dir

    if not (Path(args.out) / CONFIG).is_file():
        check_run_dir(args.out, command="evaluate", overwrite=args.overwrite)  # before loading
    specs = resolve_optimizers(args.optimizer)
    out, continued = prepare_continuable_run_dir(args.out, command="evaluate",
                                                 overwrite=args.overwrite, resumable=CONFIG)
    if continued:
        print(f"lopt evaluate: continuing the evaluation in {out} (finished cells are kept; "
              "--overwrite starts afresh)", file=sys.stderr)

    from lopt.evaluate import report
    from lopt.evaluate.harness import Interrupted, evaluate
    from lopt.utils.interrupt import graceful_interrupt
    from lopt.utils.io import atomic_write_json
    from lopt.utils.provenance import environment_info

    command = "lopt " + " ".join(sys.argv[1:]) if sys.argv and "lopt" in sys.argv[0] else None
    atomic_write_json(out / CONFIG, {
        "command": "evaluate",
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "settings": settings.__dict__,
        "suites": {n: [t.__dict__ for t in ts] for n, ts in suites.items()},
        "optimizers": [s.describe() for s in specs],
        "environment": environment_info(),
    })
    bar = _Progress(suites, specs, settings.cap, disabled=args.no_progress)
    try:
        with graceful_interrupt(
            "lopt evaluate: stopping after the current chunk (Ctrl-C again to abort)"
        ) as stop:
            evaluation = evaluate(specs, suites, settings, out, should_stop=stop.is_set,
                                  progress=bar.update, on_compile=bar.compiling)
    except Interrupted:
        bar.close()
        done = len(list((out / "cells").glob("*.safetensors")))
        print(f"lopt evaluate: interrupted; {done} finished cells are kept in {out / 'cells'}; "
              f"run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        bar.close()
    files = report.write(evaluation, out, command=command)
    for name, suite in evaluation.results["suites"].items():
        for label, summary in suite["summary"].items():
            print(f"{name}: {label}: {report.summary_line(summary)}")
    print(f"lopt evaluate: wrote {files['report']}, {files['results']} and "
          f"{len(files['figures'])} figures")
    return 0


class _Progress:
    """One bar over all training steps of the evaluation, labelled with task and optimizer."""

    def __init__(self, suites, specs, cap: float, disabled: bool):
        import math

        from tqdm import tqdm

        total = sum(t.steps * (len(specs) + math.ceil(cap)) for ts in suites.values()
                    for t in ts)
        self.bar = tqdm(total=total, disable=disabled, file=sys.stderr, unit="step")
        self.last: tuple[str, str] | None = None
        self.done_in_cell = 0

    def compiling(self, task: str, name: str) -> None:
        self.bar.set_description(f"{task} / {name} (compiling)")

    def update(self, task: str, name: str, done: int, total: int) -> None:
        if (task, name) != self.last:
            self.last, self.done_in_cell = (task, name), 0
            self.bar.set_description(f"{task} / {name}")
        self.bar.update(done - self.done_in_cell)
        self.done_in_cell = done

    def close(self) -> None:
        self.bar.close()
