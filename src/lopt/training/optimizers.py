"""Turn an optimizer named on a command line (or in an evaluation) into something trainable.

``adam | sgd | momentum | adamw`` are optax optimizers with a learning rate, ``prodigy`` the
parameter-free one (its learning rate multiplies its own estimate); ``star`` and
``blackbox`` are the learned optimizers with the package's shipped weights (or their
meta-initialization when none ship); anything else is a path to meta-parameters saved by
:func:`lopt.save_meta_params`. A STAR (by name or path) may end in ``:step_scale=S``, its one
knob (:attr:`lopt.optimizers.STAR.step_scale`), so that an evaluation can compare scales in one
run without writing weight files. Every resolved optimizer says which weights it uses (path and
sha256), so each run can record exactly what it trained with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from lopt.optimizers.hand_designed import HAND_DESIGNED, hand_designed_tx
from lopt.utils.compile import optimizer_options

#: Default learning rates of the hand-designed optimizers (``lopt train`` without ``--lr``).
DEFAULT_LR: dict[str, float] = {
    "adam": 1e-3,
    "sgd": 0.1,
    "momentum": 0.01,  # heavy ball, momentum 0.9
    "adamw": 1e-3,  # weight decay 1e-4
    "prodigy": 1.0,  # a multiplier of its own step-size estimate: 1.0 is parameter-free
}
LEARNED = ("star", "blackbox")
NAMES = (*HAND_DESIGNED, *LEARNED)
#: ``NAME_OR_PATH:step_scale=S`` (see the module docstring).
STEP_SCALE_SUFFIX = ":step_scale="


class OptimizerSpecError(ValueError):
    """An optimizer name, learning rate or weights file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A resolved optimizer: ``make_tx(theta)`` and the ``theta`` of this optimizer.

    Attributes:
        label: what reports call it (``adam``, ``star``, a file name).
        kind: ``hand_designed``, ``learned`` (a name) or ``path``.
        make_tx: ``theta -> optax transformation`` (traceable in ``theta``).
        theta: meta-parameters (learned) or ``{"learning_rate": lr}`` (hand-designed).
        weights: ``{"path", "sha256"}`` of the weights file, ``{"source":
            "meta-initialization"}`` for a learned optimizer without one, None otherwise.
        config: the learned optimizer's architecture and switches (None for optax).
        hand_designed: the optax name for hand-designed optimizers (grids are built from it).
        learning_rate: their learning rate as given (``theta`` holds it as float32).
        xla_options: extra compile options for programs that run it
            (:func:`lopt.utils.compile.optimizer_options`).
        optimizer: the learned optimizer object (None for optax).
    """

    label: str
    kind: str
    make_tx: Any
    theta: Any
    weights: dict | None = None
    config: dict | None = None
    hand_designed: str | None = None
    learning_rate: float | None = None
    xla_options: dict = dataclasses.field(default_factory=dict)
    optimizer: Any = None

    def identity(self) -> str:
        """A stable string naming exactly this optimizer: its kind, configuration and a digest
        of its parameters (caches of finished work are keyed by it)."""
        if self.hand_designed is not None:
            return f"{self.hand_designed}:lr={self.learning_rate:.6g}"
        config = json.dumps(self.config, sort_keys=True, default=str)
        return f"learned:{config}:{theta_digest(self.theta)}"

    def describe(self) -> dict:
        """JSON-ready record for ``config.json``."""
        return {
            "label": self.label,
            "kind": self.kind,
            "learning_rate": self.learning_rate,
            "weights": self.weights,
            "config": self.config,
        }


def theta_digest(theta) -> str:
    """sha256 of a parameter pytree: its structure, shapes, dtypes and values."""
    import jax
    import numpy as np

    h = hashlib.sha256(str(jax.tree.structure(theta)).encode())
    for leaf in jax.tree.leaves(theta):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def looks_like_path(name: str) -> bool:
    """Whether an optimizer argument was meant as a file (so a miss is "file not found")."""
    return "/" in name or "\\" in name or name.endswith(".safetensors") or name.startswith(".")


def weights_record(path: str | Path | None) -> dict:
    """What ``config.json`` records about the weights a learned optimizer uses:
    ``{"path", "sha256"}`` of the file, or ``{"source": "meta-initialization"}`` without one."""
    if path is None:
        return {"source": "meta-initialization"}
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def hand_designed_spec(name: str, learning_rate: float) -> OptimizerSpec:
    if name not in HAND_DESIGNED:
        raise OptimizerSpecError(
            f"unknown optimizer {name!r}; choose one of {', '.join(HAND_DESIGNED)}"
        )
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise OptimizerSpecError(f"learning rate must be a positive finite number, got "
                                 f"{learning_rate}")
    return OptimizerSpec(
        label=name,
        kind="hand_designed",
        make_tx=hand_designed_tx(name),
        theta={"learning_rate": jnp.float32(learning_rate)},
        hand_designed=name,
        learning_rate=float(learning_rate),
    )


def learned_spec(theta, optimizer, *, label: str, kind: str, weights: dict | None) -> OptimizerSpec:
    """A learned optimizer object with fixed ``theta`` (``make_tx`` is ``as_optax``)."""
    config = optimizer.config() if callable(getattr(optimizer, "config", None)) else None
    return OptimizerSpec(
        label=label,
        kind=kind,
        make_tx=lambda th: optimizer.as_optax(th),
        theta=theta,
        weights=weights,
        config=config,
        xla_options=optimizer_options(optimizer),
        optimizer=optimizer,
    )


def resolve(name: str, learning_rate: float | None = None) -> OptimizerSpec:
    """The optimizer named ``name``: a hand-designed name, ``star``/``blackbox`` or a path,
    a STAR optionally followed by ``:step_scale=S``.

    Raises:
        OptimizerSpecError: unknown name, missing or unreadable file, a learning rate given
            to a learned optimizer, or a step scale that is not a positive number or not for a
            STAR; the message says what is valid.
    """
    base, sep, value = name.rpartition(STEP_SCALE_SUFFIX)
    if sep:
        if STEP_SCALE_SUFFIX in base:
            raise OptimizerSpecError(f"{name!r}: step_scale is given more than once")
        return _with_step_scale(resolve(base, learning_rate), value, name)
    if name in HAND_DESIGNED:
        lr = DEFAULT_LR[name] if learning_rate is None else learning_rate
        return hand_designed_spec(name, lr)
    if learning_rate is not None:
        raise OptimizerSpecError(
            f"a learning rate does not apply to the learned optimizer {name!r}: it sets its "
            f"own step sizes from its meta-parameters; learning rates are for "
            f"{', '.join(DEFAULT_LR)}"
        )
    from lopt.optimizers.io import MetaParamsError, load_meta_params
    from lopt.optimizers.pretrained import resolve as resolve_learned
    from lopt.optimizers.pretrained import shipped_weights

    if name in LEARNED:
        path = shipped_weights(name)
        theta, opt = resolve_learned(name)
        weights = weights_record(path)
        return learned_spec(theta, opt, label=name, kind="learned", weights=weights)
    path = Path(name)
    if not path.exists() and looks_like_path(name):
        raise OptimizerSpecError(
            f"file not found: {name} (the optimizer is read as a path to saved meta-parameters; "
            f"names are {', '.join(NAMES)})"
        )
    if not path.exists():
        raise OptimizerSpecError(
            f"unknown optimizer {name!r}: not one of {', '.join(NAMES)}, and no file "
            f"{str(path)!r} exists (a path to saved meta-parameters)"
        )
    if not path.is_file():
        raise OptimizerSpecError(f"{name!r} is not a file (expected saved meta-parameters)")
    try:
        theta, opt = load_meta_params(path)
    except (MetaParamsError, OSError, ValueError, KeyError) as err:
        raise OptimizerSpecError(f"cannot load meta-parameters from {path}: {err}") from None
    weights = weights_record(path)
    return learned_spec(theta, opt, label=path.stem, kind="path", weights=weights)


def _with_step_scale(spec: OptimizerSpec, value: str, name: str) -> OptimizerSpec:
    """``spec`` (a STAR) with ``step_scale`` set from the text ``value``."""
    from lopt.optimizers.star import STAR

    if not isinstance(spec.optimizer, STAR):
        raise OptimizerSpecError(
            f"{name!r}: step_scale is a STAR switch and {spec.label!r} is not a STAR "
            "(hand-designed optimizers take a learning rate instead)"
        )
    try:
        scale = float(value)
    except ValueError:
        raise OptimizerSpecError(f"{name!r}: step_scale must be a number, got {value!r}") from None
    try:
        optimizer = dataclasses.replace(spec.optimizer, step_scale=scale)
    except ValueError as err:
        raise OptimizerSpecError(f"{name!r}: {err}") from None
    return learned_spec(spec.theta, optimizer, label=f"{spec.label}{STEP_SCALE_SUFFIX}{value}",
                        kind=spec.kind, weights=spec.weights)
