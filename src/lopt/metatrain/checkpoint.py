"""Atomic checkpoints of a meta-training run.

A checkpoint stores the leaves of one pytree (theta, outer optimizer state, estimator state,
...) as numpy arrays plus a small JSON-able ``meta`` dict, in one pickle written atomically
(temporary file + rename), so an interrupted write never leaves a broken checkpoint. The tree
*structure* is not pickled: on load the leaves are poured back into a template built by the
same code that built the original (a fresh ``init``), and their count, shapes and dtypes are
checked, so a checkpoint from an incompatible configuration fails loudly instead of silently.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import jax
import numpy as np

from lopt.utils.io import atomic_write_bytes

FORMAT = "lopt-metatrain-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the run trying to load it."""


def save_checkpoint(path: str | Path, tree, meta: dict) -> None:
    leaves = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(tree))]
    buf = io.BytesIO()
    pickle.dump({"format": FORMAT, "leaves": leaves, "meta": dict(meta)}, buf, protocol=4)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, template):
    """Return ``(tree, meta)``: the saved leaves in ``template``'s structure (numpy arrays)."""
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lopt meta-training checkpoint")
    leaves, treedef = jax.tree.flatten(template)
    saved = data["leaves"]
    if len(saved) != len(leaves):
        raise CheckpointError(
            f"{path} has {len(saved)} arrays, this run expects {len(leaves)}: "
            "was it written with a different optimizer, task or estimator configuration?"
        )
    for i, (a, b) in enumerate(zip(saved, leaves, strict=True)):
        if a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype:
            raise CheckpointError(
                f"{path}: array {i} is {a.dtype}{list(a.shape)}, this run expects "
                f"{np.asarray(b).dtype}{list(np.shape(b))}"
            )
    return jax.tree.unflatten(treedef, saved), data["meta"]
