"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package and cached.

The package can also download a pickle; we never use that path. Generation is deterministic
given the arguments (the package seeds numpy's global generator; we restore its state after
so that nothing else is disturbed), takes about a second for the standard 5000 samples, and
the arrays are cached as ``.npz`` under :func:`~lopt.tasks.data.base.cache_dir`.
"""

from __future__ import annotations

import functools

import numpy as np

from lopt.tasks.data.base import Dataset, cache_dir, load_npz, save_npz_atomic

#: Bump when the generation recipe changes so stale caches are not reused.
_CACHE_VERSION = 1


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    state = np.random.get_state()
    try:
        ds = make_dataset(args)
    finally:
        np.random.set_state(state)
    return {
        "x": ds["x"].astype(np.float32),
        "y": ds["y"].astype(np.int32),
        "x_test": ds["x_test"].astype(np.float32),
        "y_test": ds["y_test"].astype(np.int32),
    }


@functools.cache
def load_mnist1d(num_samples: int = 5000, seed: int = 42, use_cache: bool = True) -> Dataset:
    """MNIST-1D as ``(N, 40)`` float32 signals, 10 classes, the package's 80/20 split.

    Args:
        num_samples: total samples (train + test); fewer make generation cheaper (tests).
        seed: the generator seed (42 is the package's standard dataset).
        use_cache: read/write the cached arrays under ``cache_dir()/mnist1d``.
    """
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20 (2 per class), got {num_samples}")
    path = cache_dir() / "mnist1d" / f"mnist1d_v{_CACHE_VERSION}_n{num_samples}_s{seed}.npz"
    arrays = load_npz(path) if use_cache else None
    if arrays is None or not {"x", "y", "x_test", "y_test"} <= set(arrays):
        arrays = _generate(num_samples, seed)
        if use_cache:
            save_npz_atomic(path, **arrays)
    return Dataset(
        name="mnist1d",
        x_train=arrays["x"],
        y_train=arrays["y"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=10,
    ).frozen()
