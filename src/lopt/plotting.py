"""Every figure lopt writes, in one place: training curves, stability maps, E1, evaluation
reports and meta-training curves.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects (rendered through Agg), never
through pyplot's global state, so they work without a display and from threads. Each function
returns PNG bytes and, given a path, writes them atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _finish(fig, path: PathLike | None) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        from lopt.utils.io import atomic_write_bytes

        atomic_write_bytes(path, data)
    return data


def _auto_log_y(ax, values: Iterable[float]) -> None:
    """Log y axis when no value is negative and the positive ones span more than 20x."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    if pos and min(vals) >= 0 and max(pos) / min(pos) > 20:
        ax.set_yscale("log")


# -- lopt train --------------------------------------------------------------------------------
def training_curve(
    records: Sequence[Mapping], title: str, path: PathLike | None = None
) -> bytes:
    """Training loss (and held-out loss where recorded) against step, from metrics records."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", ms=3, label="held-out loss")
    _auto_log_y(ax, [v for _, v in train + evals])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    return _finish(fig, path)


# -- evaluation --------------------------------------------------------------------------------
def loss_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray, np.ndarray]]]],
    path: PathLike | None = None,
    *,
    xlabel: str = "step",
    ylabel: str = "training loss (smoothed)",
    columns: int = 3,
) -> bytes:
    """A grid of panels, each ``(title, [(label, x, y), ...])``: one line per optimizer."""
    n = max(1, len(panels))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, (title, lines) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        values = []
        for label, x, y in lines:
            y = np.asarray(y, float)
            ax.plot(x, y, label=label, lw=1.2)
            values += list(y[np.isfinite(y)])
        _auto_log_y(ax, values)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    return _finish(fig, path)


def speedup_bars(
    tasks: Sequence[str],
    speedups: Mapping[str, Sequence[float | None]],
    path: PathLike | None = None,
    *,
    cap: float | None = None,
    title: str = "speedup over learning-rate-tuned Adam",
) -> bytes:
    """Grouped bars: per task, one bar per optimizer (log scale, 1 = as fast as tuned Adam).

    ``None`` (diverged) is drawn as a red cross at the bottom; values at the cap are hatched.
    """
    fig = _figure(max(6.0, 0.9 * len(tasks) + 2), 4)
    ax = fig.add_subplot(1, 1, 1)
    names = list(speedups)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(tasks))
    floor = 1e-2
    for k, name in enumerate(names):
        vals = speedups[name]
        pos = x - 0.4 + width * (k + 0.5)
        heights = [max(v, floor) if v is not None else floor for v in vals]
        bars = ax.bar(pos, heights, width, label=name)
        for bar, v in zip(bars, vals, strict=True):
            if v is None:
                bar.set_alpha(0.0)
                ax.plot(bar.get_x() + bar.get_width() / 2, floor * 1.3, "rx")
            elif cap is not None and v >= cap:
                bar.set_hatch("//")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path)


def band_curves(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: PathLike | None = None,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> bytes:
    """One line per name with a min-max band: ``series[name] = (x [T], y [runs, T])``."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    values = []
    for name, (x, ys) in series.items():
        ys = np.atleast_2d(np.asarray(ys, float))
        med = np.nanmedian(ys, axis=0)
        ax.plot(x, med, label=f"{name} (median of {ys.shape[0]})")
        if ys.shape[0] > 1:
            ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), alpha=0.2)
        values += list(med[np.isfinite(med)])
    _auto_log_y(ax, values)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)


# -- meta-training -----------------------------------------------------------------------------
def meta_training_curves(
    metrics: Sequence[Mapping], evals: Sequence[Mapping], title: str,
    path: PathLike | None = None,
) -> bytes:
    """PES meta-loss per outer step (raw and smoothed) and the fixed held-out evaluation."""
    fig = _figure(9, 3.6)
    ax0, ax1 = fig.subplots(1, 2)
    steps = np.array([m["outer_step"] for m in metrics], float)
    loss = np.array([m["meta_loss"] for m in metrics], float)
    if len(steps):
        ax0.plot(steps, loss, lw=0.5, alpha=0.4, label="per step")
        w = max(1, len(loss) // 50)
        if w > 1:
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            ax0.plot(steps[w - 1 :], smooth, label=f"mean of {w}")
        ax0.legend(fontsize=8)
    ax0.set_title("meta-loss (training estimate)")
    ax0.set_xlabel("outer step")
    ax0.grid(alpha=0.3)
    if evals:
        es = [e["outer_step"] for e in evals]
        ax1.plot(es, [e["eval_loss"] for e in evals], "o-", ms=3, label="mean along run")
        if all("eval_final_loss" in e for e in evals):
            ax1.plot(es, [e["eval_final_loss"] for e in evals], "s--", ms=3, label="last step")
        ax1.legend(fontsize=8)
    ax1.set_title("held-out evaluation (fixed tasks)")
    ax1.set_xlabel("outer step")
    ax1.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


# -- stability analysis ------------------------------------------------------------------------
def stability_map(smap, path: PathLike | None = None) -> bytes:
    """A :class:`~lopt.analysis.maps.StabilityMap`: radius colour-coded around 1, the
    ``rho = 1`` contour and the refined boundary."""
    from matplotlib import colors

    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    rho = np.where(np.isfinite(smap.spectral_radius), smap.spectral_radius, 2.0)
    rho = np.clip(rho, 0.0, 2.0)
    # the blue half spans the observed stable radii, so near-1 maps still show their structure
    norm = colors.TwoSlopeNorm(vmin=min(float(rho.min()), 0.9), vcenter=1.0, vmax=2.0)
    mesh = ax.pcolormesh(
        smap.x_values, smap.y_values, rho, cmap="RdBu_r", norm=norm, shading="auto"
    )
    cbar = fig.colorbar(mesh, ax=ax, label="spectral radius (clipped to 2)")
    cbar.set_ticks([norm.vmin, (norm.vmin + 1.0) / 2, 1.0, 1.5, 2.0])
    if rho.shape[0] > 1 and rho.shape[1] > 1 and (rho.min() < 1.0 < rho.max()):
        ax.contour(smap.x_values, smap.y_values, rho, levels=[1.0], colors="k", linewidths=1.5)
    pts = [(b, y) for b, y in zip(smap.boundary, smap.y_values, strict=True) if b is not None]
    if pts and smap.x_name == "lr":  # a learned map's radius need not be monotone along x
        bx, by = zip(*pts, strict=True)
        ax.plot(bx, by, "k--", lw=1, label="edge rho = 1")
        ax.legend(loc="lower left")
    ax.set_xscale("log")
    if smap.y_name != "beta" and np.all(smap.y_values > 0):
        ax.set_yscale("log")
    ax.set_xlabel(smap.x_name)
    ax.set_ylabel(smap.y_name)
    ax.set_title(f"stability of {smap.optimizer} on the quadratic")
    return _finish(fig, path)


def linear_meta_training(results: Mapping, path: PathLike | None = None) -> bytes:
    """E1: spectral radius, most negative eigenvalue and meta-loss of meta-learned linear
    optimizers on the noisy quadratic model, per outer step (one line per variant)."""
    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 3)
    for name, r in results.items():
        steps = range(len(r.spectral_radius))
        axes[0].plot(steps, r.spectral_radius, label=name)
        axes[1].plot(steps, r.min_real, label=name)
        axes[2].plot(range(1, len(r.meta_loss) + 1), r.meta_loss, label=name)
    axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].axhline(-1.0, color="k", lw=0.8, ls="--")
    axes[0].set_title("spectral radius of A")
    axes[1].set_title("most negative eigenvalue (edge -1)")
    axes[2].set_title("meta-loss (log mean loss)")
    for ax in axes:
        ax.set_xlabel("outer step")
    axes[0].legend()
    return _finish(fig, path)
