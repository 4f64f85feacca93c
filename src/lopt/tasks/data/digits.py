"""scikit-learn's bundled 8x8 handwritten digits (1797 images; no download ever)."""

from __future__ import annotations

import functools

import numpy as np

from lopt.tasks.data.base import Dataset

#: fraction of the 1797 images held out for ``eval_loss``.
TEST_FRACTION = 0.2


@functools.cache
def load_digits(seed: int = 0) -> Dataset:
    """The 8x8 digits as ``(N, 8, 8, 1)`` float32 in [0, 1], split 80/20 by a fixed permutation.

    Cached per process: it is read from a file inside the scikit-learn package.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    raw = _sk_load_digits()
    x = (raw.images.astype(np.float32) / 16.0)[..., None]
    y = raw.target.astype(np.int32)
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
