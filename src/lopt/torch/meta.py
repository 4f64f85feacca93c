"""Meta-parameters for the torch optimizers: resolved by the JAX loaders, held as torch tensors.

There is one loader (:mod:`lopt.optimizers.pretrained` / :mod:`lopt.optimizers.io`); this module
only decides which architecture config goes with which theta, and turns theta into what the
torch update needs on a given device. The meta-learned decays are pure functions of theta,
fixed for the optimizer's life: they are evaluated once by the JAX code
(``AccumulatorConfig.decays``), so the bounded parameterization has one implementation.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np
import torch

from lopt.optimizers.io import (
    MetaParamsError,
    flatten_meta_params,
    optimizer_classes,
    unflatten_meta_params,
)
from lopt.optimizers.pretrained import resolve, shipped_weights
from lopt.torch.features import Decays, make_decays, time_scales
from lopt.torch.switches import ARCHITECTURE, check_supported


def build_config(kind: str, config: dict):
    """The JAX optimizer dataclass for ``config``, validated, with unknown keys named."""
    cls = optimizer_classes()[kind]
    try:
        opt = cls.from_config(dict(config))
    except TypeError as err:
        valid = sorted(cls().config())
        raise TypeError(f"{kind}: {err}; valid options are {valid}") from None
    check_supported(kind, opt.config())
    return opt


def resolve_meta_params(kind: str, theta, switches: dict):
    """``(theta, optimizer)`` with theta a JAX pytree and optimizer the JAX config dataclass.

    ``theta=None``: the shipped weights, or meta-initialization (key 0) of the optimizer built
    from ``switches`` when none ship. A path: that file (its architecture is binding; switches
    may only change per-group options). Anything else: a theta pytree (JAX/numpy/torch leaves)
    for the optimizer built from ``switches``.
    """
    if theta is None and shipped_weights(kind) is None:
        opt = build_config(kind, switches)
        return opt.init(jax.random.PRNGKey(0)), opt
    if theta is None or isinstance(theta, (str, os.PathLike)):
        theta_j, saved = resolve(kind, theta)
        saved_cfg = saved.config()
        opt = build_config(kind, {**saved_cfg, **switches})
        clash = sorted(k for k in ARCHITECTURE[kind] if opt.config()[k] != saved_cfg[k])
        if clash:
            where = theta if theta is not None else shipped_weights(kind)
            raise ValueError(
                f"{clash} are part of the {kind} architecture stored with the meta-parameters "
                f"({where}) and cannot be overridden"
            )
        return theta_j, opt
    opt = build_config(kind, switches)
    flat = {k: _to_numpy(v) for k, v in flatten_meta_params(_map_leaves(theta)).items()}
    return unflatten_meta_params(opt, flat, "theta"), opt


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _map_leaves(theta):
    """torch tensors are not JAX pytree leaves by default; turn them into numpy first."""
    return jax.tree.map(_to_numpy, theta, is_leaf=lambda x: isinstance(x, torch.Tensor))


def theta_to_torch(theta) -> dict[str, torch.Tensor]:
    """``{"mlp/w0": tensor, ...}`` on the CPU (the layout of the safetensors file)."""
    flat = flatten_meta_params(theta)
    return {k: torch.tensor(np.array(v, dtype=np.float32)) for k, v in flat.items()}


def theta_from_torch(opt, flat: dict[str, torch.Tensor]):
    """Inverse of :func:`theta_to_torch`, checked against ``opt``'s architecture."""
    try:
        return unflatten_meta_params(opt, {k: _to_numpy(v) for k, v in flat.items()}, "theta")
    except MetaParamsError as err:
        raise ValueError(f"state_dict meta-parameters do not fit this optimizer: {err}") from None


class DeviceMeta(NamedTuple):
    """What the update needs on one device: MLP layers, decays, time scales."""

    layers: list
    decays: Decays
    scales: torch.Tensor


def device_meta(opt, theta, device) -> DeviceMeta:
    mlp = theta["mlp"]
    n_layers = len([k for k in mlp if k.startswith("w")])
    put = lambda x: torch.tensor(np.array(x, dtype=np.float32), device=device)
    layers = [(put(mlp[f"w{i}"]), put(mlp[f"b{i}"])) for i in range(n_layers)]
    d = jax.tree.map(np.asarray, opt.accumulators.decays(theta["decays"]))
    decays = make_decays(d["momentum"], d["rms"], d["factored"], device)
    return DeviceMeta(layers=layers, decays=decays, scales=time_scales(device))
