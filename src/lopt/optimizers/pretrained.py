"""Drop-in optax optimizers with shipped or user-provided meta-parameters."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jax

from lopt.optimizers.io import load_meta_params, optimizer_classes


def shipped_weights(kind: str) -> Path | None:
    """Path of the best weights of ``kind`` shipped in ``lopt/weights``, if there are any."""
    path = resources.files("lopt") / "weights" / f"{kind}.safetensors"
    return Path(str(path)) if path.is_file() else None


def resolve(kind: str, theta=None):
    """``(theta, optimizer)`` for ``theta`` = None (shipped or meta-init), a path, or a pytree."""
    cls = optimizer_classes()[kind]
    if theta is None:
        path = shipped_weights(kind)
        if path is None:
            opt = cls()
            return opt.init(jax.random.PRNGKey(0)), opt
        theta = path
    if isinstance(theta, (str, Path)):
        loaded, opt = load_meta_params(theta)
        if not isinstance(opt, cls):
            raise ValueError(f"{theta} holds {opt.name} meta-parameters, not {kind}")
        return loaded, opt
    return theta, cls()


def star(theta=None, **optax_kwargs):
    """STAR as an optax transformation.

    ``theta=None`` uses the best weights the package ships (until pretrained weights exist:
    STAR at meta-initialization, a sound Adam-AggMo optimizer with step 1e-3); a path loads
    meta-parameters saved by :func:`lopt.save_meta_params`; a pytree is used as-is with the
    default STAR architecture.
    """
    theta, opt = resolve("star", theta)
    return opt.as_optax(theta, **optax_kwargs)


def blackbox(theta=None, **optax_kwargs):
    """The blackbox Adafactor-MLP baseline as an optax transformation (see :func:`star`)."""
    theta, opt = resolve("blackbox", theta)
    return opt.as_optax(theta, **optax_kwargs)
