"""Offline datasets: built without network, cached atomically; file loaders reject garbage."""

import gzip
import pickle
import socket
import struct

import numpy as np
import pytest

from lopt.tasks import data
from lopt.tasks.data import DatasetError


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_digits_offline(no_network):
    ds = data.load_digits()
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_digits_read_from_the_shipped_file_equal_scikit_learns_loader(monkeypatch):
    """The images and labels lopt reads from scikit-learn's bundled CSV (without importing
    scikit-learn) against scikit-learn's own loader; without the file, the loader is used."""
    import importlib.util

    from sklearn.datasets import load_digits as sklearn_load_digits

    from lopt.tasks.data import digits

    raw = sklearn_load_digits()
    images, target = digits._digits_arrays()
    np.testing.assert_array_equal(images, raw.images)
    np.testing.assert_array_equal(target, raw.target)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, target = digits._digits_arrays()
    np.testing.assert_array_equal(images, raw.images)
    np.testing.assert_array_equal(target, raw.target)


def test_mnist1d_offline_cached_and_deterministic(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("LOPT_CACHE", str(tmp_path))
    state = np.random.get_state()[1].copy()
    ds = data.load_mnist1d.__wrapped__(num_samples=200, seed=7)
    assert np.array_equal(np.random.get_state()[1], state), "global numpy RNG disturbed"
    assert ds.x_train.shape == (160, 40) and ds.x_test.shape == (40, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "mnist1d").glob(".*tmp"))
    again = data.load_mnist1d.__wrapped__(num_samples=200, seed=7)  # read from the cache
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    fresh = data.load_mnist1d.__wrapped__(num_samples=200, seed=7, use_cache=False)
    np.testing.assert_array_equal(ds.x_test, fresh.x_test)


def test_mnist1d_cache_is_read_back(tmp_path, monkeypatch):
    """Generation is deterministic, so equal arrays cannot tell a cache hit from regenerating:
    a valid cache file with altered contents must be returned as it is."""
    monkeypatch.setenv("LOPT_CACHE", str(tmp_path))
    ds = data.load_mnist1d.__wrapped__(num_samples=100, seed=3)
    (path,) = (tmp_path / "mnist1d").glob("*.npz")
    with np.load(path) as cached:
        arrays = {k: cached[k] for k in cached.files}
    arrays["x"] = arrays["x"] + 1.0
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    again = data.load_mnist1d.__wrapped__(num_samples=100, seed=3)
    np.testing.assert_array_equal(again.x_train, ds.x_train + 1.0)
    fresh = data.load_mnist1d.__wrapped__(num_samples=100, seed=3, use_cache=False)
    np.testing.assert_array_equal(fresh.x_train, ds.x_train)  # without the cache: regenerated


def test_mnist1d_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPT_CACHE", str(tmp_path))
    ds = data.load_mnist1d.__wrapped__(num_samples=100, seed=1)
    (path,) = (tmp_path / "mnist1d").glob("*.npz")
    path.write_bytes(b"garbage")
    again = data.load_mnist1d.__wrapped__(num_samples=100, seed=1)
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_stdlib_text_deterministic():
    a = data.load_stdlib_text.__wrapped__(max_bytes=20_000)
    b = data.load_stdlib_text.__wrapped__(max_bytes=20_000)
    assert len(a.train) + len(a.test) == 20_000
    np.testing.assert_array_equal(a.train, b.train)
    assert a.train.max() < a.vocab_size == 128
    assert "import" in a.decode(a.train)


def test_downsample_area_average():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(data.downsample(img, 2)[0], [[2.5, 4.5], [10.5, 12.5]])
    x = np.random.default_rng(0).random((3, 28, 28, 2)).astype(np.float32)
    y = data.downsample(x, 8)
    assert y.shape == (3, 8, 8, 2)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_mnist(folder, n_train=12, n_test=6, compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader_reads_generated_files(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    ds = data.load_mnist(tmp_path)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (6, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    small = data.load_mnist(tmp_path, size=8)
    assert small.x_train.shape == (12, 8, 8, 1) and small.name == "mnist8"


def test_idx_loader_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    ds = data.load_mnist(tmp_path, variant="fashion_mnist", size=16)
    assert ds.x_train.shape == (12, 16, 16, 1)


def test_idx_missing_file_names_expected_file_and_place(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist(tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[:-5],  # truncated data
        lambda raw: b"\x12\x34" + raw[2:],  # bad magic
        lambda raw: raw[:2] + b"\x42" + raw[3:],  # unknown dtype code
    ],
)
def test_idx_rejects_corrupt_files(tmp_path, corrupt):
    write_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


def test_idx_rejects_corrupt_gzip(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        data.load_mnist(tmp_path)


def test_idx_rejects_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5)))
    with pytest.raises(DatasetError, match="12 train images but 5 labels"):
        data.load_mnist(tmp_path)


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(folder, n=4):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in (*data.cifar.TRAIN_BATCHES, data.cifar.TEST_BATCH):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    return batches


def test_cifar_loader_reads_generated_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_allclose(ds.x_train[0] * 255, first, atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    small = data.load_cifar10(tmp_path, size=8, max_train_batches=2)
    assert small.x_train.shape == (8, 8, 8, 3)


def test_cifar_missing_names_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load_cifar10(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(tmp_path)


@pytest.mark.parametrize(
    "payload",
    [
        b"not a pickle at all",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}),
        pickle.dumps({b"labels": [0, 1]}),
    ],
)
def test_cifar_rejects_corrupt_batches(tmp_path, payload):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(payload)
    with pytest.raises(DatasetError, match="data_batch_2"):
        data.load_cifar10(tmp_path)


def test_stdlib_text_tiny_eval_fraction_keeps_both_splits():
    corpus = data.load_stdlib_text.__wrapped__(max_bytes=1000, eval_fraction=1e-4)
    assert (len(corpus.train), len(corpus.test)) == (999, 1)
