"""Offline datasets: bundled, generated, or loaded from files the user provides.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits.
- :func:`load_mnist1d`: MNIST-1D generated locally by the ``mnist1d`` package, cached.
- :func:`load_stdlib_text`: the Python standard library's sources as a byte-level corpus.
- :func:`load_mnist` (IDX, MNIST / Fashion-MNIST) and :func:`load_cifar10` (python batches):
  real datasets from a folder the user names, optionally area-downsampled to 8x8 / 16x16.
"""

from lopt.tasks.data.base import Dataset, DatasetError, cache_dir, downsample
from lopt.tasks.data.cifar import load_cifar10, read_cifar_batch
from lopt.tasks.data.digits import load_digits
from lopt.tasks.data.idx import load_mnist, parse_idx, read_idx
from lopt.tasks.data.mnist1d import load_mnist1d
from lopt.tasks.data.text import TextCorpus, load_stdlib_text

__all__ = [
    "Dataset",
    "DatasetError",
    "TextCorpus",
    "cache_dir",
    "downsample",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_mnist1d",
    "load_stdlib_text",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
]
