"""Checkpoints are data (safetensors + JSON): exact round trip, never unpickled, checked on load."""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.metatrain.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _tree():
    return {
        "theta": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7, "b": jnp.float32(0.3)},
        "count": jnp.int32(17),
        "flags": jnp.array([True, False]),
        "empty": jnp.zeros((0, 4), jnp.float32),
        "raw_key": jax.random.PRNGKey(5),  # uint32 key data
        "typed_key": jax.random.key(9),
    }


def test_round_trip_is_bit_exact_with_meta(tmp_path):
    tree = _tree()
    meta = {"outer_step": 3, "best": {"eval_loss": 0.1 + 0.2, "outer_step": None},
            "config": {"hidden_sizes": [2, 2], "sigma": 1e-3}}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, tree, meta)
    template = jax.tree.map(jnp.zeros_like, tree)
    template["typed_key"] = jax.random.key(0)
    got, got_meta = load_checkpoint(path, template)
    assert got_meta == meta
    assert jax.tree.structure(got) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tree), strict=True):
        if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b)
    # the typed key still draws the same numbers
    np.testing.assert_array_equal(jax.random.normal(got["typed_key"], (3,)),
                                  jax.random.normal(tree["typed_key"], (3,)))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tree(), {"outer_step": 1})
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)  # np.load(allow_pickle=...) is not used either
    _, meta = load_checkpoint(path, _tree())
    assert meta == {"outer_step": 1}


class _Payload:
    """Unpickling this creates a directory: the classic code-execution gadget."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_crafted_pickle_checkpoint_cannot_run_code(tmp_path):
    target = tmp_path / "pwned"
    evil = pickle.dumps({"format": "lopt-metatrain-checkpoint-1", "leaves": _Payload(str(target))})
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe))))  # the gadget is real: unpickling runs it
    assert probe.is_dir()
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(evil)
    with pytest.raises(CheckpointError, match="not a readable lopt checkpoint"):
        load_checkpoint(path, _tree())
    assert not target.exists()


def test_foreign_and_mismatched_files_fail_with_one_line(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    path.write_text("hello, I am a text file")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, _tree())
    assert "\n" not in str(err.value)
    save_file({"leaf_00000": np.zeros(2, np.float32)}, str(path), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not an lopt meta-training checkpoint"):
        load_checkpoint(path, _tree())
    save_checkpoint(path, {"a": jnp.zeros(3)}, {})
    with pytest.raises(CheckpointError, match="has 1 arrays, this run expects 2"):
        load_checkpoint(path, {"a": jnp.zeros(3), "b": jnp.zeros(3)})
    with pytest.raises(CheckpointError, match=r"array 0 is float32\[3\], this run expects "
                                              r"float32\[4\]"):
        load_checkpoint(path, {"a": jnp.zeros(4)})
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors", {"a": jnp.zeros(3)})
