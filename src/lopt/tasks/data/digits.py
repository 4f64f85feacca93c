"""scikit-learn's bundled 8x8 handwritten digits (1797 images; no download ever)."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from lopt.tasks.data.base import Dataset

#: fraction of the 1797 images held out for ``eval_loss``.
TEST_FRACTION = 0.2


@functools.cache
def load_digits(seed: int = 0) -> Dataset:
    """The 8x8 digits as ``(N, 8, 8, 1)`` float32 in [0, 1], split 80/20 by a fixed permutation.

    Cached per process: it is read from a file inside the scikit-learn package.
    """
    images, target = _digits_arrays()
    x = (images.astype(np.float32) / 16.0)[..., None]
    y = target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    x, y = x[perm], y[perm]
    n_test = int(round(len(y) * TEST_FRACTION))
    return Dataset(
        name="digits",
        x_train=x[n_test:],
        y_train=y[n_test:],
        x_test=x[:n_test],
        y_test=y[:n_test],
        num_classes=10,
    ).frozen()


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images ``(1797, 8, 8)`` and labels, straight from the CSV that scikit-learn ships.

    Read without importing scikit-learn (half a second of every run's start-up, for a 60 kB
    file); its own loader is the fallback if the file is not where it has always been.
    """
    spec = importlib.util.find_spec("sklearn")
    folder = spec.submodule_search_locations if spec is not None else None
    path = Path(folder[0]) / "datasets" / "data" / "digits.csv.gz" if folder else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",")
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits as sklearn_load_digits

    raw = sklearn_load_digits()
    return raw.images, raw.target
