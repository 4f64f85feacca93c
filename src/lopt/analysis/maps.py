"""Stability maps: spectral radius over learning rate x curvature (or momentum), and the edge.

For a diagonal Hessian every linear optimizer here decouples into one small system per curvature,
so a whole row of the map is one batched eigenvalue call. The boundary (``rho = 1``) is located per
row on the grid and refined by bisection on the learning rate, so it does not depend on the grid
resolution. Learned optimizers get the same picture over gradient scale x curvature from
:func:`lopt.analysis.linearize.stability_report` (see :func:`learned_map`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lopt.analysis import linear

__all__ = [
    "StabilityMap",
    "per_direction_radius",
    "stability_map",
    "learned_map",
    "plot_map",
    "save_map",
]


@dataclass(frozen=True, eq=False)
class StabilityMap:
    """``spectral_radius[i, j]`` at ``y_values[i]`` (curvature or beta) and ``x_values[j]`` (lr).

    ``boundary[i]`` is the smallest x above the stable region of row i where ``rho`` reaches 1
    (``None``: the row has no stable point or no edge inside the x range).
    """

    optimizer: str
    x_name: str
    x_values: np.ndarray
    y_name: str
    y_values: np.ndarray
    spectral_radius: np.ndarray
    boundary: list
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        def num(v):
            v = float(v)
            return v if np.isfinite(v) else None

        return {
            "optimizer": self.optimizer,
            "x_name": self.x_name,
            "x_values": [float(v) for v in self.x_values],
            "y_name": self.y_name,
            "y_values": [float(v) for v in self.y_values],
            "spectral_radius": [[num(v) for v in row] for row in self.spectral_radius],
            "boundary": [None if b is None else float(b) for b in self.boundary],
            "settings": dict(self.settings),
        }


#: curvatures per linear-dynamics build in :func:`stability_map` (the dense state matrix has
#: (state blocks x curvatures)^2 entries, so many curvatures at once cost more than they save)
ROW_BLOCK = 8


def per_direction_radius(dyn: linear.LinearDynamics) -> np.ndarray:
    """Spectral radius per eigen-direction for a diagonal Hessian (state in ``k`` blocks of ``d``).

    Extracts the ``k x k`` system of each direction and checks that they exhaust ``A`` (true for
    every optimizer in :mod:`lopt.analysis.linear` with scalar or diagonal preconditioners).
    """
    d, n = dyn.param_dim, dyn.state_dim
    if n % d:
        raise ValueError("state is not a stack of parameter-sized blocks")
    if not np.allclose(dyn.H, np.diag(np.diag(dyn.H))):
        raise ValueError("per-direction radius needs a diagonal Hessian")
    k = n // d
    A = dyn.A
    idx = np.arange(k)[None, :] * d + np.arange(d)[:, None]  # (d, k): state indices of direction i
    blocks = A[idx[:, :, None], idx[:, None, :]]  # (d, k, k)
    rebuilt = np.zeros_like(A)
    rebuilt[idx[:, :, None], idx[:, None, :]] = blocks
    if not np.allclose(rebuilt, A, atol=1e-12):
        raise ValueError("dynamics do not decouple per direction")
    if not np.all(np.isfinite(blocks)):
        return np.full(d, np.inf)
    return np.max(np.abs(np.linalg.eigvals(blocks)), axis=-1)


def _rho_point(name, lr, h, kw) -> float:
    return linear.build(name, [h], lr, **kw).spectral_radius()


def _boundary_row(rho_row, xs, radius_at) -> float | None:
    """First stable->unstable crossing along x (ascending), refined by bisection in log x."""
    stable = rho_row < 1.0
    if not stable.any():
        return None
    first = int(np.argmax(stable))
    after = np.nonzero(~stable[first:])[0]
    if after.size == 0:
        return None
    j = first + int(after[0])
    lo, hi = xs[j - 1], xs[j]
    for _ in range(40):
        mid = np.sqrt(lo * hi)
        if radius_at(mid) < 1.0:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


def stability_map(
    optimizer: str,
    lrs: Sequence[float],
    curvatures: Sequence[float] | float,
    *,
    betas_axis: Sequence[float] | None = None,
    beta: float = 0.9,
    betas: Sequence[float] = (0.0, 0.9, 0.99),
    second_moment: float = 1.0,
    weight_decay: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
    on_row: Callable[[], None] | None = None,
) -> StabilityMap:
    """Spectral radius of an analytic optimizer (see ``linear.OPTIMIZERS``) over a grid.

    Default: learning rate x curvature at fixed ``beta``. With ``betas_axis`` given, learning rate x
    momentum ``beta`` at the single curvature ``curvatures``. Rows (one y value each, with its
    refined edge) are finished one at a time: ``on_row()`` after each, ``should_stop()`` before
    each; a stop returns the rows finished so far (possibly none).
    """

    def stop() -> bool:
        return should_stop is not None and should_stop()

    xs = np.sort(np.asarray(lrs, dtype=np.float64).ravel())
    if xs.size < 2 or np.any(xs <= 0):
        raise ValueError("need at least two learning rates, all > 0")
    base_kw = {"betas": tuple(betas), "second_moment": second_moment, "weight_decay": weight_decay}
    if betas_axis is None:
        hs = np.asarray(curvatures, dtype=np.float64).ravel()
        if hs.size == 0 or np.any(hs < 0):
            raise ValueError("curvatures must be >= 0")
        kw = dict(base_kw, beta=beta)
        rows, boundary = [], []
        for start in range(0, hs.size, ROW_BLOCK):
            # a few curvatures per build: the state matrix grows with their square
            block = hs[start : start + ROW_BLOCK]
            rho = np.stack(
                [per_direction_radius(linear.build(optimizer, block, x, **kw)) for x in xs], 1
            )
            for h, row in zip(block, rho, strict=True):
                if stop():
                    break
                rows.append(row)
                boundary.append(
                    _boundary_row(row, xs, lambda lr, h=h: _rho_point(optimizer, lr, h, kw))
                )
                if on_row is not None:
                    on_row()
            if len(rows) < min(start + ROW_BLOCK, hs.size):
                break
        ys, y_name = hs[: len(rows)], "curvature"
        rho = np.asarray(rows, float).reshape(len(rows), xs.size)
        settings = dict(kw)
    else:
        h = float(np.asarray(curvatures, dtype=np.float64).ravel()[0])
        ys = np.asarray(betas_axis, dtype=np.float64).ravel()
        rows, boundary = [], []
        for b in ys:
            if stop():
                break
            kw = dict(base_kw, beta=float(b))
            row = np.array([_rho_point(optimizer, x, h, kw) for x in xs])
            rows.append(row)
            boundary.append(
                _boundary_row(row, xs, lambda lr, kw=kw: _rho_point(optimizer, lr, h, kw))
            )
            if on_row is not None:
                on_row()
        ys = ys[: len(rows)]
        rho, y_name = np.asarray(rows, float).reshape(len(rows), xs.size), "beta"
        settings = dict(base_kw, curvature=h)
    settings["betas"] = list(settings.get("betas", ()))
    return StabilityMap(optimizer, "lr", xs, y_name, ys, rho, boundary, settings)


def learned_map(optimizer, theta, grad_scales, curvatures, **report_kw) -> StabilityMap:
    """Map of a learned optimizer over gradient scale x curvature from its linearization."""
    from lopt.analysis.linearize import stability_report

    rep = stability_report(optimizer, theta, curvatures, grad_scales, **report_kw)
    xs = rep.grad_scales
    boundary = []
    for row in rep.spectral_radius:
        stable = row < 1.0
        cross = np.nonzero(stable[:-1] & ~stable[1:])[0]
        boundary.append(float(xs[cross[0] + 1]) if cross.size else None)
    name = rep.settings["optimizer"]
    settings = dict(rep.settings, grad_rms=rep.grad_rms.tolist())
    return StabilityMap(
        name, "grad_scale", xs, "curvature", rep.curvatures, rep.spectral_radius, boundary, settings
    )


def plot_map(smap: StabilityMap, path: str | os.PathLike | None = None) -> bytes:
    """PNG of the map (drawn by :func:`lopt.plotting.stability_map`)."""
    from lopt.plotting import stability_map as draw

    return draw(smap, path)


def save_map(smap: StabilityMap, out_dir: str | os.PathLike) -> dict:
    """Write ``map.png``, ``map.json`` (grid, radius, boundary) and ``map.csv`` into ``out_dir``."""
    from lopt.utils.io import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_map(smap, out / "map.png")
    atomic_write_json(out / "map.json", smap.to_dict())
    lines = [f"{smap.y_name},{smap.x_name},spectral_radius,stable"]
    for i, y in enumerate(smap.y_values):
        for j, x in enumerate(smap.x_values):
            r = smap.spectral_radius[i, j]
            lines.append(f"{y:.10g},{x:.10g},{r:.10g},{int(r < 1.0)}")
    atomic_write_bytes(out / "map.csv", ("\n".join(lines) + "\n").encode())
    return {"png": str(out / "map.png"), "json": str(out / "map.json"), "csv": str(out / "map.csv")}
