"""Atomic, data-only checkpoints of a meta-training run.

A checkpoint stores the leaves of one pytree (theta, outer optimizer state, estimator state,
...) as tensors of a safetensors file, named ``leaf_00000``, ``leaf_00001``, ... in the tree's
flattening order, and a small JSON ``meta`` dict in the file's header metadata. It is written
atomically (temporary file + rename), so an interrupted write never leaves a broken checkpoint.

Nothing in the file is executable: safetensors holds raw little-endian arrays and a JSON header,
and loading never unpickles (a checkpoint from an untrusted source cannot run code). The tree
*structure* is not stored: on load the leaves are poured back into a template built by the same
code that built the original (a fresh ``init``), and their count, shapes and dtypes are checked,
so a checkpoint from an incompatible configuration fails loudly instead of silently. Typed PRNG
key leaves are stored as their key data and rewrapped from the template.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from lopt.utils.io import atomic_write_bytes

FORMAT = "lopt-metatrain-checkpoint"
FORMAT_VERSION = "2"  # 1 was a pickle (no longer read: unpickling can run code)


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or does not fit the run trying to load it."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _name(i: int) -> str:
    return f"leaf_{i:05d}"


def save_checkpoint(path: str | Path, tree, meta: dict) -> None:
    """Write the leaves of ``tree`` and the JSON-serializable ``meta`` to ``path`` atomically."""
    from safetensors.numpy import save

    leaves = [jax.random.key_data(x) if _is_key(x) else x for x in jax.tree.leaves(tree)]
    # np.array(..., order="C"), not ascontiguousarray: that would turn 0-d leaves into shape (1,)
    tensors = {
        _name(i): np.array(x, order="C") for i, x in enumerate(jax.device_get(leaves))
    }
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_leaves": str(len(tensors)),
        "meta": json.dumps(dict(meta), sort_keys=True),
    }
    atomic_write_bytes(path, save(tensors, metadata=header))


def load_checkpoint(path: str | Path, template):
    """Return ``(tree, meta)``: the saved leaves in ``template``'s structure (numpy arrays,
    typed PRNG keys where the template has them) and the saved ``meta`` dict.

    Raises:
        CheckpointError: not a readable checkpoint of this format, or leaves that do not match
            the template (count, shape, dtype); the message names the file and the problem.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            header = fh.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not an lopt meta-training checkpoint")
            if header.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {header.get('format_version')!r}, this "
                    f"lopt reads {FORMAT_VERSION!r}"
                )
            names = sorted(fh.keys(), key=lambda k: (len(k), k))
            saved = [fh.get_tensor(name) for name in names]
            meta = json.loads(header["meta"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"{path} is not a readable lopt checkpoint (not a safetensors file, or corrupt: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if names != [_name(i) for i in range(len(names))] or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: unexpected tensor names or meta in the checkpoint")
    leaves, treedef = jax.tree.flatten(template)
    if len(saved) != len(leaves):
        raise CheckpointError(
            f"{path} has {len(saved)} arrays, this run expects {len(leaves)}: "
            "was it written with a different optimizer, task or estimator configuration?"
        )
    out = []
    for i, (a, b) in enumerate(zip(saved, leaves, strict=True)):
        want = np.asarray(jax.random.key_data(b)) if _is_key(b) else np.asarray(b)
        if a.shape != want.shape or a.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: array {i} is {a.dtype}{list(a.shape)}, this run expects "
                f"{want.dtype}{list(want.shape)}"
            )
        out.append(jax.random.wrap_key_data(a, impl=jax.random.key_impl(b)) if _is_key(b) else a)
    return jax.tree.unflatten(treedef, out), meta
