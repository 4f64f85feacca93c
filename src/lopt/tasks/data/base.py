"""Shared pieces of the offline datasets: the :class:`Dataset` record, the cache folder,
atomic ``.npz`` caching and area-averaging downsampling.

Every loader returns plain numpy arrays; tasks move them to the device once, when the task
is built, so that batch sampling is an index draw inside ``jit``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lopt.utils.io import atomic_write_bytes


class DatasetError(ValueError):
    """A dataset file exists but is not what it should be (truncated, wrong format, ...)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A small in-memory classification dataset with a train and a held-out split.

    ``x_*`` are float32 arrays ``(N, ...)``; ``y_*`` are int32 labels in ``[0, num_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        if len(self.x_train) != len(self.y_train):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.x_train)} train inputs but "
                f"{len(self.y_train)} labels"
            )
        if len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.x_test)} test inputs but "
                f"{len(self.y_test)} labels"
            )
        if len(self.x_train) == 0:
            raise ValueError(f"dataset {self.name!r} has no training examples")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: train inputs {self.x_train.shape[1:]} and test inputs "
                f"{self.x_test.shape[1:]} differ in shape"
            )
        if self.num_classes < 2:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 2")
        for split, y in (("train", self.y_train), ("test", self.y_test)):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: {split} labels outside [0, {self.num_classes})"
                )

    def frozen(self) -> Dataset:
        """Mark the arrays read-only (for per-process cached datasets shared by callers)."""
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            arr.flags.writeable = False
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$LOPT_CACHE`` or ``~/.cache/lopt``.

    Read at call time (not import time) so tests and users can redirect it per run.
    """
    env = os.environ.get("LOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lopt"


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to ``path`` so that a reader never sees a partial file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Read a cache file; ``None`` when it is missing or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights: each output bin averages the input it overlaps, by area."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            overlap = min(hi, j + 1) - max(lo, j)
            if overlap > 0:
                w[i, j] = overlap
        w[i] /= hi - lo
    return w


def downsample(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Area-average images ``(N, H, W)`` or ``(N, H, W, C)`` to ``size``.

    Exact area averaging also for non-integer factors (28 -> 8), like ``resize(method='area')``
    in the reference tasks. Returns float32.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images (N, H, W) or (N, H, W, C), got shape {images.shape}")
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = images.shape[1:3]
    if not (0 < oh <= h and 0 < ow <= w):
        raise ValueError(f"cannot downsample {h}x{w} images to {oh}x{ow}")
    wh, ww = _area_matrix(h, oh), _area_matrix(w, ow)
    x = images.astype(np.float32)
    if images.ndim == 3:
        out = np.einsum("ih,nhw,jw->nij", wh, x, ww, optimize=True)
    else:
        out = np.einsum("ih,nhwc,jw->nijc", wh, x, ww, optimize=True)
    return out.astype(np.float32)
