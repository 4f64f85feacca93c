"""Drop-in optax optimizers with shipped or user-provided meta-parameters.

Shipped weights live in the package (``lopt/weights/<kind>.safetensors``) next to a model card
(``<kind>.md`` for people, ``<kind>.json`` for programs) that records how they were trained and
their sha256. Loading verifies the checksum, so a modified or corrupted file is refused with a
clear error instead of silently training with something else. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import resources
from pathlib import Path

import jax

from lopt.optimizers.io import MetaParamsError, load_meta_params, optimizer_classes
from lopt.utils.compile import enable_compilation_cache

KINDS = ("star", "blackbox")


def weights_dir() -> Path:
    """The package's folder of shipped weights and model cards."""
    return Path(str(resources.files("lopt") / "weights"))


def shipped_weights(kind: str) -> Path | None:
    """Path of the weights of ``kind`` shipped in ``lopt/weights``, if there are any."""
    path = weights_dir() / f"{kind}.safetensors"
    return path if path.is_file() else None


def model_card(kind: str) -> dict | None:
    """The machine-readable model card of the shipped ``kind`` weights (None if none ship)."""
    path = weights_dir() / f"{kind}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def verify_shipped(kind: str) -> Path:
    """The shipped weights of ``kind`` after checking their sha256 against the model card.

    Raises:
        MetaParamsError: no model card, no checksum in it, or a mismatch.
    """
    path = shipped_weights(kind)
    if path is None:
        raise MetaParamsError(f"no {kind} weights ship with this installation")
    card = model_card(kind)
    expected = (card or {}).get("sha256")
    if not expected:
        raise MetaParamsError(f"{path}: no model card with a sha256 next to the shipped weights")
    h = hashlib.sha256(path.read_bytes()).hexdigest()
    if h != expected:
        raise MetaParamsError(
            f"{path}: sha256 {h} does not match the model card's {expected}: the shipped "
            "weights were modified or corrupted; reinstall lopt"
        )
    return path


def resolve(kind: str, theta=None):
    """``(theta, optimizer)`` for ``theta`` = None (shipped or meta-init), a path, or a pytree."""
    cls = optimizer_classes()[kind]
    if theta is None:
        if shipped_weights(kind) is None:
            opt = cls()
            return opt.init(jax.random.PRNGKey(0)), opt
        theta = verify_shipped(kind)
    if isinstance(theta, (str, Path)):
        loaded, opt = load_meta_params(theta)
        if not isinstance(opt, cls):
            raise ValueError(f"{theta} holds {opt.name} meta-parameters, not {kind}")
        return loaded, opt
    return theta, cls()


def star(theta=None, *, step_scale: float | None = None, **optax_kwargs):
    """STAR as an optax transformation.

    ``theta=None`` uses the weights the package ships (checksum-verified; STAR at
    meta-initialization, a sound Adam-AggMo optimizer with step 1e-3, if none ship); a path
    loads meta-parameters saved by :func:`lopt.save_meta_params`; a pytree is used as-is with
    the default STAR architecture. No horizon or total step count is needed; ``loss=`` is
    optional. Turns on lopt's persistent compilation cache (see :mod:`lopt.utils.compile`).

    ``step_scale`` multiplies the whole step, as a learning rate would; 1 is the update as
    meta-trained, and None (the default) keeps the value the weights were saved with (1 for
    the shipped ones). Try 0.5 or 0.25 on a task unlike the meta-training mix where STAR
    trains slower than Adam (the model card has the measurements).
    """
    enable_compilation_cache()
    theta, opt = resolve("star", theta)
    if step_scale is not None:
        opt = dataclasses.replace(opt, step_scale=step_scale)
    return opt.as_optax(theta, **optax_kwargs)


def blackbox(theta=None, **optax_kwargs):
    """The blackbox Adafactor-MLP baseline as an optax transformation (see :func:`star`)."""
    enable_compilation_cache()
    theta, opt = resolve("blackbox", theta)
    return opt.as_optax(theta, **optax_kwargs)
