"""MNIST and Fashion-MNIST from IDX files a user provides (raw or gzipped).

Layout searched, in order, for each of the four standard file names (with or without
``.gz``): ``DIR/``, ``DIR/<MNIST|FashionMNIST>/raw/`` (torchvision's layout) and
``DIR/<mnist|fashion_mnist>/``. ``DIR`` defaults to ``cache_dir()/<variant>``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from lopt.tasks.data.base import Dataset, DatasetError, cache_dir, downsample

#: IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_SUBDIRS = {
    "mnist": ("MNIST/raw", "mnist"),
    "fashion_mnist": ("FashionMNIST/raw", "fashion_mnist", "fashion-mnist"),
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX byte string; raise :class:`DatasetError` naming ``source`` if malformed."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{source}: not an IDX file (bad magic number {data[:4].hex()!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{source}: unknown IDX data type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{source}: IDX header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gunzipping it when it is gzip-compressed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{path}: corrupt gzip data ({err})") from None
    return parse_idx(raw, str(path))


def _find(directory: Path, variant: str, stem: str) -> Path:
    places = [directory] + [directory / sub for sub in _SUBDIRS[variant]]
    for place in places:
        for name in (stem, stem + ".gz"):
            if (place / name).is_file():
                return place / name
    raise FileNotFoundError(
        f"{variant}: expected {stem} or {stem}.gz in one of: "
        + ", ".join(str(p) for p in places)
        + " (download the IDX files there, or pass the folder that holds them)"
    )


def load_mnist(
    directory: str | os.PathLike | None = None,
    variant: str = "mnist",
    size: int | None = None,
) -> Dataset:
    """MNIST or Fashion-MNIST as ``(N, s, s, 1)`` float32 in [0, 1].

    Args:
        directory: folder holding the IDX files (see the module doc for layouts searched).
        variant: ``"mnist"`` or ``"fashion_mnist"``.
        size: downsample to ``size x size`` by area averaging (8 or 16 like the reference
            tasks); ``None`` keeps 28x28.
    """
    if variant not in _SUBDIRS:
        raise ValueError(f"variant must be one of {sorted(_SUBDIRS)}, got {variant!r}")
    directory = Path(directory) if directory is not None else cache_dir() / variant
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find(directory, variant, stem)
        arr = read_idx(path)
        want = 3 if key.endswith("images") else 1
        if arr.ndim != want:
            raise DatasetError(f"{path}: expected a {want}-d IDX array, got shape {arr.shape}")
        arrays[key] = arr
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DatasetError(
                f"{variant} in {directory}: {n_img} {split} images but {n_lab} labels"
            )
    xs = {}
    for split in ("train", "test"):
        x = arrays[f"{split}_images"].astype(np.float32) / 255.0
        if size is not None:
            x = downsample(x, size)
        xs[split] = x[..., None]
    return Dataset(
        name=variant if size is None else f"{variant}{size}",
        x_train=xs["train"],
        y_train=arrays["train_labels"].astype(np.int32),
        x_test=xs["test"],
        y_test=arrays["test_labels"].astype(np.int32),
        num_classes=10,
    )
