"""Numbers an evaluation reports: smoothed losses, speedup over tuned Adam, summaries.

Definitions (all on the mean-over-seeds training-loss curve; ``losses[t]`` is the loss at the
parameters before update ``t + 1``, so ``losses[0]`` is the initial loss):

* smoothed loss at step ``t`` (``t`` updates done, ``1 <= t <= T``): the mean of the last
  ``w`` recorded losses ``losses[t - w : t]`` (fewer at the start), ``w = window(T)``: 5% of
  the optimizer's run. Minibatch noise would otherwise decide speedups.
* final smoothed loss: the smoothed loss at ``T``, the optimizer's last step.
* steps to reach a target: the first ``t`` at which the smoothed curve is ``<= target``.
* speedup (the VeLOdrome definition): steps the baseline needs to reach the optimizer's final
  smoothed loss, divided by the optimizer's steps ``T``. The baseline runs ``cap x T`` steps,
  so speedups up to ``cap`` are measured; a baseline that never gets there gives ``cap`` marked
  *censored* (reported as ``>= cap``).
* divergence: any non-finite loss, or a final smoothed loss above the initial loss. A diverged
  run has no speedup; it is counted and reported, never averaged in as a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

#: fraction of the optimizer's run the smoothing window covers
WINDOW_FRACTION = 0.05


def window(steps: int) -> int:
    """Smoothing window (in steps) for a run of ``steps`` updates: 5%, at least 1."""
    return max(1, int(round(WINDOW_FRACTION * steps)))


def smoothed(losses: np.ndarray, w: int) -> np.ndarray:
    """``out[t - 1]`` = mean of ``losses[max(0, t - w) : t]`` for ``t = 1 .. len(losses)``.

    Non-finite values propagate (a window containing one is non-finite)."""
    x = np.asarray(losses, np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D loss curve, got shape {x.shape}")
    if w < 1:
        raise ValueError(f"window must be >= 1, got {w}")
    c = np.concatenate([[0.0], np.cumsum(x)])
    t = np.arange(1, len(x) + 1)
    lo = np.maximum(0, t - w)
    return (c[t] - c[lo]) / (t - lo)


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """First ``t`` (1-based: updates done) with ``curve[t - 1] <= target``; None if never.

    ``curve`` is a smoothed curve from :func:`smoothed`."""
    hit = np.flatnonzero(np.asarray(curve) <= target)
    return int(hit[0]) + 1 if hit.size else None


def is_diverged(losses: np.ndarray, w: int) -> bool:
    """Non-finite anywhere, or the final smoothed loss above the initial loss."""
    x = np.asarray(losses, np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        return True
    return bool(smoothed(x, w)[-1] > x[0])


@dataclasses.dataclass(frozen=True)
class Speedup:
    """Speedup of one optimizer over a baseline on one task.

    ``value`` is None when the optimizer diverged; ``censored`` means the baseline never reached
    the target within ``cap x steps`` (the true speedup is ``>= value == cap``).
    ``baseline_steps`` is the baseline's steps to the target (None when censored).
    """

    value: float | None
    censored: bool
    diverged: bool
    target: float | None
    baseline_steps: int | None

    def label(self) -> str:
        if self.diverged:
            return "diverged"
        prefix = ">= " if self.censored else ""
        return f"{prefix}{self.value:.2f}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def speedup(
    optimizer_losses: np.ndarray, baseline_losses: np.ndarray, cap: float
) -> Speedup:
    """Speedup of ``optimizer_losses`` (``T`` steps) over ``baseline_losses`` (up to ``cap x T``).

    Both are mean-over-seeds curves; the smoothing window is :func:`window` of ``T`` for both, so
    "the loss at step t" means the same thing on either curve."""
    opt = np.asarray(optimizer_losses, np.float64)
    steps = len(opt)
    if steps < 1:
        raise ValueError("empty optimizer curve")
    w = window(steps)
    if is_diverged(opt, w):
        return Speedup(None, False, True, None, None)
    target = float(smoothed(opt, w)[-1])
    base = np.asarray(baseline_losses, np.float64)[: int(math.floor(cap * steps))]
    reached = steps_to_reach(smoothed(base, w), target) if base.size else None
    if reached is None:
        return Speedup(float(cap), True, False, target, None)
    return Speedup(reached / steps, False, False, target, reached)


def best_speedup(
    optimizer_losses: np.ndarray, grid_losses: Sequence[np.ndarray], cap: float
) -> tuple[Speedup, int | None]:
    """Speedup over the grid point that reaches the target first (tuned per target: the most
    demanding baseline a learning-rate grid offers). Returns ``(speedup, grid index)``; the
    index is None when no grid point reached the target or the optimizer diverged."""
    results = [speedup(optimizer_losses, g, cap) for g in grid_losses]
    if not results:
        raise ValueError("empty baseline grid")
    first = results[0]
    if first.diverged:
        return first, None
    reached = [(r.baseline_steps, i) for i, r in enumerate(results) if r.baseline_steps]
    if not reached:
        return first, None
    _, index = min(reached)
    return results[index], index


def tune(grid_losses: Sequence[np.ndarray], steps: int) -> tuple[int | None, list[float | None]]:
    """Index of the grid point with the lowest smoothed training loss at ``steps`` (the
    optimizer's budget) among those that did not diverge, and every point's value (None if
    diverged). Returns ``(None, values)`` when every point diverged."""
    w = window(steps)
    values: list[float | None] = []
    for g in grid_losses:
        head = np.asarray(g, np.float64)[:steps]
        values.append(None if len(head) < steps or is_diverged(head, w)
                      else float(smoothed(head, w)[-1]))
    finite = [(v, i) for i, v in enumerate(values) if v is not None]
    return (min(finite)[1] if finite else None), values


def on_edge(index: int | None, size: int) -> bool:
    """Whether a chosen grid index sits on the grid's edge (the optimum may lie outside)."""
    return index is not None and size > 1 and index in (0, size - 1)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (by rank; at least one value)."""
    x = np.sort(np.asarray(values, np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("iqm of nothing")
    lo, hi = int(math.floor(0.25 * n)), int(math.ceil(0.75 * n))
    return float(np.mean(x[lo:hi])) if hi > lo else float(np.median(x))


def bootstrap_ci(
    values: Sequence[float], stat=np.median, *, level: float = 0.95, resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` over resampled tasks (seeded)."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        raise ValueError("bootstrap of nothing")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    stats = np.array([stat(x[i]) for i in idx])
    a = (1.0 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))


def summarize(speedups: Sequence[Speedup]) -> dict:
    """Median, IQM and a bootstrap CI of the median over tasks; diverged tasks are counted and
    left out of the statistics; censored values enter at the cap (so the statistics are then
    lower bounds, flagged by ``censored``)."""
    ok = [s.value for s in speedups if not s.diverged]
    out = {
        "tasks": len(speedups),
        "diverged": sum(s.diverged for s in speedups),
        "censored": sum(s.censored for s in speedups),
        "median": None,
        "iqm": None,
        "median_ci95": None,
        "geomean": None,
    }
    if ok:
        out["median"] = float(np.median(ok))
        out["iqm"] = iqm(ok)
        out["median_ci95"] = list(bootstrap_ci(ok))
        positive = [v for v in ok if v > 0]
        if positive:
            out["geomean"] = float(np.exp(np.mean(np.log(positive))))
    return out
