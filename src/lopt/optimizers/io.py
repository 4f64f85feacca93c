"""Saving and loading meta-parameters as safetensors files.

safetensors is framework-neutral (numpy, JAX and PyTorch read it without pickle), so a file
written here can be used by a PyTorch front-end. The header's metadata carries everything
needed to rebuild the optimizer: its kind, its architecture config (JSON) and provenance.

File layout: one tensor per theta leaf, named by its path (``mlp/w0``, ``decays/momentum``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lopt.utils.io import atomic_write_bytes

FORMAT = "lopt-meta-params"
FORMAT_VERSION = "1"


#: safetensors refuses headers above 100 MB; a larger "length" means this is not such a file
MAX_HEADER_BYTES = 100_000_000


class MetaParamsError(ValueError):
    """A meta-parameter file that cannot be used; the message says why."""


def optimizer_classes() -> dict:
    from lopt.optimizers.blackbox import Blackbox
    from lopt.optimizers.star import STAR

    return {"star": STAR, "blackbox": Blackbox}


def _flatten(theta, *, arrays: bool = True) -> dict:
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[key] = np.asarray(leaf) if arrays else leaf
    return flat


def _template(optimizer):
    """Shapes of ``optimizer.init``'s theta, without running it (running it eagerly compiled a
    dozen one-op programs: a second or more of every save and load)."""
    return jax.eval_shape(optimizer.init, jax.random.PRNGKey(0))


def save_meta_params(path, theta, optimizer, *, extra_metadata: dict | None = None) -> Path:
    """Write ``theta`` of ``optimizer`` (a STAR or Blackbox instance) to ``path`` atomically.

    ``extra_metadata`` (JSON-serializable) is stored too, e.g. how the weights were trained.
    """
    from safetensors.numpy import save

    kinds = optimizer_classes()
    if getattr(optimizer, "name", None) not in kinds:
        raise TypeError(f"can only save meta-parameters of {sorted(kinds)}, got {optimizer!r}")
    _check_structure(_flatten(_template(optimizer), arrays=False), _flatten(theta), "theta to save")
    from lopt import __version__

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": optimizer.name,
        "config": json.dumps(optimizer.config(), sort_keys=True),
        "lopt_version": __version__,
        "extra": json.dumps(extra_metadata or {}, sort_keys=True, default=str),
    }
    # (np.ascontiguousarray would turn 0-d leaves into shape (1,))
    tensors = {k: np.array(v, dtype=np.float32, order="C") for k, v in _flatten(theta).items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def read_metadata(path) -> dict:
    """The header metadata of a meta-parameter file, validated."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not" if path.is_dir() else "file not found: no"
        raise MetaParamsError(f"{path}: {what} meta-parameter file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise MetaParamsError(f"{path}: truncated file ({size} bytes): not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise MetaParamsError(
                f"{path}: not a safetensors file (it does not start with a header length and a "
                "JSON header; was another kind of file renamed .safetensors?)"
            )
        if n > size - 8:
            raise MetaParamsError(
                f"{path}: truncated or not a safetensors file (header says {n} bytes, file has "
                f"{size - 8} after the length field)"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetaParamsError(f"{path}: corrupt safetensors header ({err})") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise MetaParamsError(
            f"{path}: not an lopt meta-parameter file (metadata format={meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise MetaParamsError(
            f"{path}: format version {meta.get('format_version')!r}, this lopt reads "
            f"{FORMAT_VERSION!r}"
        )
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise MetaParamsError(
            f"{path}: truncated file: tensors need {8 + n + end} bytes, file has {size}"
        )
    return meta


def load_meta_params(path):
    """Read a file written by :func:`save_meta_params`.

    Returns ``(theta, optimizer)``: the meta-parameters as JAX arrays and the optimizer
    (``STAR``/``Blackbox`` instance with the saved architecture). Wrong architecture, wrong
    shapes, unknown optimizer kind or a truncated/corrupt file raise :class:`MetaParamsError`
    naming the problem.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    kinds = optimizer_classes()
    kind = meta.get("optimizer")
    if kind not in kinds:
        raise MetaParamsError(f"{path}: unknown optimizer {kind!r}; known: {sorted(kinds)}")
    try:
        optimizer = kinds[kind].from_config(json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise MetaParamsError(f"{path}: invalid {kind} config in metadata: {err}") from None
    try:
        flat = load_file(os.fspath(path))
    except SafetensorError as err:
        raise MetaParamsError(f"{path}: corrupt safetensors data: {err}") from None
    return unflatten_meta_params(optimizer, flat, str(path)), optimizer


def flatten_meta_params(theta) -> dict[str, np.ndarray]:
    """``{"mlp/w0": array, ...}``: theta by leaf path, the layout of the safetensors file."""
    return _flatten(theta)


def unflatten_meta_params(optimizer, flat: dict, what: str = "meta-parameters"):
    """The theta pytree of ``optimizer`` from a ``{path: array}`` dict, checked: every tensor
    present with the architecture's shape and finite, else :class:`MetaParamsError`."""
    expected = _template(optimizer)
    exp_flat = _flatten(expected, arrays=False)
    flat = {k: np.asarray(v) for k, v in flat.items()}
    _check_structure(exp_flat, flat, what)
    leaves = [jnp.asarray(flat[k], jnp.float32) for k in exp_flat]
    return jax.tree.unflatten(jax.tree.structure(expected), leaves)


def _check_structure(expected: dict, got: dict, what: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise MetaParamsError(
            f"{what}: tensors do not match the architecture (missing {missing}, "
            f"unexpected {unexpected})"
        )
    for k, v in expected.items():
        if tuple(np.shape(got[k])) != tuple(np.shape(v)):
            raise MetaParamsError(
                f"{what}: tensor {k!r} has shape {tuple(np.shape(got[k]))}, the architecture "
                f"needs {tuple(np.shape(v))}"
            )
        if not np.all(np.isfinite(np.asarray(got[k]))):
            raise MetaParamsError(f"{what}: tensor {k!r} contains non-finite values")
