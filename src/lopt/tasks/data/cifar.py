"""CIFAR-10 from the "python version" batches a user provides.

Expected files: ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (pickled dicts with
``data``: uint8 ``(N, 3072)`` channel-major rows, ``labels``: N ints), in ``DIR/`` or
``DIR/cifar-10-batches-py/``; ``DIR`` defaults to ``cache_dir()/cifar10``.

These files are pickles: only load ones from a source you trust (the official archive).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from lopt.tasks.data.base import Dataset, DatasetError, cache_dir, downsample

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_SUBDIR = "cifar-10-batches-py"


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images ``(N, 32, 32, 3)`` uint8, labels ``(N,)`` int32)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}") from None
    except Exception as err:  # pickle raises many types on garbage input
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DatasetError(f"{path}: missing 'data' or 'labels' (keys: {sorted(obj)})")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            f"{path}: 'data' should be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"{path}: 'labels' should be {len(data)} ints in [0, 9]")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _find_dir(directory: Path) -> Path:
    for place in (directory, directory / _SUBDIR):
        if (place / TEST_BATCH).is_file():
            return place
    raise FileNotFoundError(
        f"CIFAR-10: expected {', '.join(TRAIN_BATCHES)} and {TEST_BATCH} in {directory} or "
        f"{directory / _SUBDIR} (the python version of the official archive, extracted)"
    )


def load_cifar10(
    directory: str | os.PathLike | None = None,
    size: int | None = None,
    max_train_batches: int = 5,
) -> Dataset:
    """CIFAR-10 as ``(N, s, s, 3)`` float32 in [0, 1].

    Args:
        directory: folder holding the batches (or their ``cifar-10-batches-py`` folder).
        size: downsample to ``size x size`` by area averaging (8 or 16); ``None`` keeps 32.
        max_train_batches: read only the first k training batches (less memory).
    """
    if not 1 <= max_train_batches <= 5:
        raise ValueError(f"max_train_batches must be in 1..5, got {max_train_batches}")
    directory = Path(directory) if directory is not None else cache_dir() / "cifar10"
    place = _find_dir(directory)
    xs, ys = [], []
    for name in TRAIN_BATCHES[:max_train_batches]:
        if not (place / name).is_file():
            raise FileNotFoundError(f"CIFAR-10: expected training batch {place / name}")
        x, y = read_cifar_batch(place / name)
        xs.append(x)
        ys.append(y)
    x_test, y_test = read_cifar_batch(place / TEST_BATCH)

    def prep(x):
        x = x.astype(np.float32) / 255.0
        return downsample(x, size) if size is not None else x

    return Dataset(
        name="cifar10" if size is None else f"cifar10_{size}",
        x_train=prep(np.concatenate(xs)),
        y_train=np.concatenate(ys),
        x_test=prep(x_test),
        y_test=y_test,
        num_classes=10,
    )
