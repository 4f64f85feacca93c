"""Evaluate optimizers against a learning-rate-tuned baseline: tasks x optimizers x seeds.

For every task the baseline (Adam unless told otherwise) runs its whole learning-rate grid for
``cap x steps`` steps, every seed, in one vmapped program; every optimizer runs ``steps`` steps
on the same seeds (same initializations and batches). Each finished (task, optimizer) pair is a
*cell*, written atomically to ``OUT/cells/`` as safetensors (arrays) with JSON metadata, keyed by
what determines it (optimizer identity -- configuration and a digest of its parameters --,
task, steps, seeds, grid). Re-running into the same folder skips finished cells, so an
interrupted evaluation continues where it stopped; metrics are recomputed from the cells.

What the numbers mean is defined in :mod:`lopt.evaluate.metrics`. Two views of "tuned Adam":

* for the **speedup**, the grid point that reaches the optimizer's final smoothed loss first
  (Adam tuned per target: the most demanding baseline the grid offers);
* for **final and held-out loss** at equal steps, the grid point with the lowest smoothed
  training loss at the optimizer's budget (Adam tuned for that budget).

Either is flagged when it sits on the grid's edge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lopt.evaluate import metrics
from lopt.evaluate.suites import SuiteTask, build_task
from lopt.training.optimizers import OptimizerSpec

#: Adam's learning-rate grid: 1e-4 ... 1e-1 in half-decade steps.
ADAM_GRID = tuple(float(f"{10 ** (-4 + 0.5 * i):.3g}") for i in range(7))
CELL_FORMAT = "lopt-eval-cell-1"


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How an evaluation runs.

    Attributes:
        seeds: seeds per (task, optimizer); every optimizer sees the same ones.
        cap: the baseline runs ``cap x steps``; speedups above ``cap`` are reported ``>= cap``.
        baseline: hand-designed optimizer tuned over ``grid`` (``adam``, ``momentum``, ...).
        grid: its learning rates.
        eval_points: held-out evaluations per optimizer run (the baseline's are at the same
            steps, continued to its longer run).
    """

    seeds: int = 3
    cap: float = 4.0
    baseline: str = "adam"
    grid: tuple[float, ...] = ADAM_GRID
    eval_points: int = 10

    def __post_init__(self):
        from lopt.optimizers.hand_designed import HAND_DESIGNED, LEARNING_RATE_TUNED

        object.__setattr__(self, "grid", tuple(float(x) for x in self.grid))
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not self.cap >= 1:
            raise ValueError(f"cap must be >= 1, got {self.cap}")
        if self.baseline not in LEARNING_RATE_TUNED:
            what = (
                "sets its own step size, so a grid of learning rates cannot tune it (evaluate "
                "it as an optimizer instead)" if self.baseline in HAND_DESIGNED else "is unknown"
            )
            raise ValueError(
                f"baseline {self.baseline!r} {what}; the baseline is one of "
                f"{', '.join(LEARNING_RATE_TUNED)}"
            )
        if not self.grid or any(not (math.isfinite(x) and x > 0) for x in self.grid):
            raise ValueError(f"grid must be positive learning rates, got {self.grid}")
        if self.eval_points < 1:
            raise ValueError(f"eval_points must be >= 1, got {self.eval_points}")

    def seed_list(self) -> list[int]:
        return list(range(self.seeds))


# -- cells on disk ------------------------------------------------------------------------------
def _cell_key(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_cell(path: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    from safetensors.numpy import save

    from lopt.utils.io import atomic_write_bytes

    meta = {"format": CELL_FORMAT, "info": json.dumps(info, sort_keys=True)}
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def load_cell(path: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cell at ``path``, or None if it is missing or unreadable (then it is recomputed)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CELL_FORMAT:
                return None
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        return arrays, json.loads(meta["info"])
    except Exception:  # a torn or foreign file: recompute rather than fail the evaluation
        return None


# -- running one cell --------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
    """Mean-over-seeds training curves ``losses [G, n]`` (G = 1 for an optimizer, the grid for
    the baseline), held-out losses ``eval_losses [G, S, E]`` at ``eval_steps``, and metadata."""

    losses: np.ndarray
    eval_losses: np.ndarray
    eval_steps: np.ndarray
    info: dict

    def eval_at(self, step: int) -> np.ndarray | None:
        """Mean-over-seeds held-out loss of every variant at ``step`` (None if not evaluated)."""
        hits = np.flatnonzero(self.eval_steps == step)
        if not hits.size or self.eval_losses.size == 0:
            return None
        return np.mean(self.eval_losses[:, :, hits[0]], axis=1)


def _run_cell(
    path: Path | None,
    info: dict,
    task,
    make_tx,
    thetas,
    seeds: list[int],
    steps: int,
    eval_every: int,
    *,
    should_stop=None,
    on_progress=None,
    on_compile=None,
    xla_options=None,
) -> Cell | None:
    """Load the cell at ``path`` or compute it; None when interrupted (nothing is written)."""
    if path is not None:
        loaded = load_cell(path)
        if loaded is not None:
            arrays, saved = loaded
            if on_progress is not None:
                on_progress(steps)
            return Cell(arrays["losses"], arrays["eval_losses"], arrays["eval_steps"], saved)
    from lopt.training.loop import train_curves

    curves = train_curves(
        task,
        make_tx,
        thetas,
        seeds,
        steps,
        eval_every=eval_every,
        stop_on_nonfinite="all",
        should_stop=should_stop,
        on_chunk=(lambda done, losses, ev: on_progress(done)) if on_progress else None,
        on_compile=on_compile,
        xla_options=xla_options,
    )
    if curves.stopped == "interrupted":
        return None
    losses = curves.losses
    if curves.steps_done < steps:  # every run diverged: the rest of the curve is non-finite
        pad = np.full(losses.shape[:-1] + (steps - curves.steps_done,), np.nan)
        losses = np.concatenate([losses, pad], axis=-1)
    with np.errstate(invalid="ignore"):
        mean = np.mean(losses, axis=1)  # over seeds; a diverged seed makes the mean non-finite
    info = dict(info, wall_s=round(curves.wall_s, 3), compile_s=round(curves.compile_s, 3),
                stopped=curves.stopped)
    cell = Cell(
        mean.astype(np.float32),
        curves.eval_losses.astype(np.float32),
        np.asarray(curves.eval_steps, np.int64),
        info,
    )
    if path is not None:
        save_cell(path, {"losses": cell.losses, "eval_losses": cell.eval_losses,
                         "eval_steps": cell.eval_steps}, info)
    return cell


# -- one task ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TaskRun:
    """The cells of one suite task: the baseline grid and one per optimizer."""

    task: SuiteTask
    baseline: Cell
    optimizers: dict[str, Cell]


class Interrupted(Exception):
    """The evaluation was stopped by ``should_stop``; finished cells are on disk."""


def run_task(
    suite_task: SuiteTask,
    optimizers: Sequence[OptimizerSpec],
    settings: EvalSettings,
    cells_dir: Path | None = None,
    *,
    task=None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[str, str, int, int], None] | None = None,
    on_compile: Callable[[str, str], None] | None = None,
) -> TaskRun:
    """Every cell of one task (computed or loaded). ``task`` overrides the registry lookup
    (a user :class:`~lopt.tasks.base.Task` evaluated under ``suite_task.task`` as its name).

    ``progress(task, optimizer, steps_done, steps_total)`` is called as work advances."""
    from lopt.optimizers.hand_designed import hand_designed_tx
    from lopt.training.loop import stack_variants

    task = task if task is not None else build_task(suite_task.task)
    steps = suite_task.steps
    seeds = settings.seed_list()
    eval_every = _divisor_at_most(steps, max(1, steps // settings.eval_points))
    base_steps = int(math.ceil(settings.cap * steps))
    common = {"task": suite_task.task, "steps": steps, "seeds": seeds, "eval_every": eval_every}

    def cell_path(parts: dict) -> Path | None:
        return None if cells_dir is None else cells_dir / f"{_cell_key(parts)}.safetensors"

    def hooks(name: str, total: int):
        return dict(
            should_stop=should_stop,
            on_progress=(lambda done: progress(suite_task.task, name, done, total))
            if progress else None,
            on_compile=(lambda: on_compile(suite_task.task, name)) if on_compile else None,
        )

    base_info = dict(common, kind="baseline", baseline=settings.baseline,
                     grid=list(settings.grid), baseline_steps=base_steps)
    label = f"{settings.baseline} grid"
    baseline = _run_cell(
        cell_path(base_info), base_info, task, hand_designed_tx(settings.baseline),
        {"learning_rate": np.asarray(settings.grid, np.float32)}, seeds, base_steps,
        eval_every, **hooks(label, base_steps),
    )
    if baseline is None:
        raise Interrupted
    cells = {}
    for spec in optimizers:
        key = dict(common, kind="optimizer", optimizer=spec.identity())
        cell = _run_cell(
            cell_path(key), dict(key, label=spec.label), task, spec.make_tx,
            stack_variants([spec.theta]), seeds, steps, eval_every, **hooks(spec.label, steps),
            xla_options=spec.xla_options,
        )
        if cell is None:
            raise Interrupted
        cells[spec.label] = cell
    return TaskRun(suite_task, baseline, cells)


def task_metrics(run: TaskRun, settings: EvalSettings) -> dict:
    """The numbers of one task: tuned baseline, and per optimizer speedup and losses."""
    steps = run.task.steps
    w = metrics.window(steps)
    grid_curves = list(run.baseline.losses)
    tuned, tuned_values = metrics.tune(grid_curves, steps)
    base_eval = run.baseline.eval_at(steps)
    baseline = {
        "name": settings.baseline,
        "grid": list(settings.grid),
        "final_loss_by_lr": tuned_values,
        "tuned_lr": None if tuned is None else settings.grid[tuned],
        "tuned_lr_on_edge": metrics.on_edge(tuned, len(settings.grid)),
        "final_loss": None if tuned is None else tuned_values[tuned],
        "final_eval_loss": _num(base_eval[tuned]) if base_eval is not None and tuned is not None
        else None,
        "initial_loss": _num(grid_curves[0][0]),
    }
    out = {"task": run.task.task, "steps": steps, "baseline": baseline, "optimizers": {}}
    for label, cell in run.optimizers.items():
        curve = cell.losses[0]
        diverged = metrics.is_diverged(curve, w)
        best, index = metrics.best_speedup(curve, grid_curves, settings.cap)
        at_tuned = (
            metrics.speedup(curve, grid_curves[tuned], settings.cap) if tuned is not None
            else None
        )
        ev = cell.eval_at(steps)
        out["optimizers"][label] = {
            "speedup": best.to_dict(),
            "speedup_label": best.label(),
            "speedup_lr": None if index is None else settings.grid[index],
            "speedup_lr_on_edge": metrics.on_edge(index, len(settings.grid)),
            "speedup_vs_tuned_lr": None if at_tuned is None else at_tuned.to_dict(),
            "final_loss": None if diverged else _num(metrics.smoothed(curve, w)[-1]),
            "final_eval_loss": None if ev is None else _num(ev[0]),
            "diverged": diverged,
            "wall_s": cell.info.get("wall_s"),
        }
    return out


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` that is <= ``k`` (evaluations then land on step ``n``)."""
    return next(d for d in range(min(k, n), 0, -1) if n % d == 0)


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# -- a whole evaluation ---------------------------------------------------------------------
@dataclasses.dataclass
class Evaluation:
    """``results``: the JSON-ready numbers (``results.json``); ``runs``: the cells behind them
    per suite (curves for figures)."""

    results: dict
    runs: dict[str, list[TaskRun]]


def evaluate(
    optimizers: Sequence[OptimizerSpec],
    suites: dict[str, Sequence[SuiteTask]],
    settings: EvalSettings | None = None,
    out_dir: str | Path | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[str, str, int, int], None] | None = None,
    on_compile: Callable[[str, str], None] | None = None,
) -> Evaluation:
    """Run (or load) every cell and return the :class:`Evaluation`.

    Raises :class:`Interrupted` when ``should_stop`` fired; finished cells stay in
    ``OUT/cells`` and the next call with the same ``out_dir`` continues from them.
    """
    settings = settings or EvalSettings()
    labels = [s.label for s in optimizers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"optimizer labels must be unique, got {labels}")
    cells_dir = None if out_dir is None else Path(out_dir) / "cells"
    results: dict = {
        "settings": dataclasses.asdict(settings),
        "optimizers": {s.label: s.describe() for s in optimizers},
        "suites": {},
    }
    runs: dict[str, list[TaskRun]] = {}
    for name, tasks in suites.items():
        runs[name] = []
        rows = []
        for suite_task in tasks:
            run = run_task(suite_task, optimizers, settings, cells_dir,
                           should_stop=should_stop, progress=progress, on_compile=on_compile)
            runs[name].append(run)
            rows.append(task_metrics(run, settings))
        summary = {
            label: metrics.summarize([
                metrics.Speedup(**row["optimizers"][label]["speedup"]) for row in rows
            ])
            for label in labels
        }
        results["suites"][name] = {"tasks": rows, "summary": summary}
    return Evaluation(results, runs)
