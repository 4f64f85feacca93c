"""How MLP outputs and accumulators become the parameter change, in torch.

Mirrors ``leaf_delta`` of :class:`lopt.optimizers.STAR` and :class:`lopt.optimizers.Blackbox`
branch by branch, reading the same (JAX) config dataclass, so a switch means the same thing in
both front-ends. Each switch is handled in exactly one place below; a config key that has no
branch here must not be listed in :mod:`lopt.torch.switches` (the front-end then refuses it).

The scalar factors are Python floats multiplied into float32 tensors, as in JAX, and the terms
are accumulated in the same order (``0 - s_bb - s_nom - w_eff p``).
"""

from __future__ import annotations

import torch

from lopt.optimizers.blackbox import Blackbox
from lopt.optimizers.star import STAR


def blackbox_step(cfg, outs: torch.Tensor) -> torch.Tensor:
    """``s_bb = lambda_s * d * exp(lambda_0 * m)`` from the first two outputs (in place)."""
    magnitude = outs[1].mul_(cfg.magnitude_multiplier).exp_()
    return outs[0].mul_(cfg.step_multiplier).mul_(magnitude)


def nominal_direction(kind: str, g, m, rsqrt_v):
    """``g_hat`` (see :func:`lopt.optimizers.star.nominal_direction`); may return a view."""
    if kind == "sgd":
        return g
    if kind == "sgdm":
        return m[-1]
    mean_m = torch.sum(m, dim=0).div_(3.0)
    if kind == "aggmo":
        return mean_m
    if kind == "adam":
        return m[-1] * rsqrt_v
    if kind == "adam_aggmo":
        return mean_m.mul_(rsqrt_v)
    raise ValueError(f"unknown nominal {kind!r}")


def _aggregate(x: torch.Tensor, how: str) -> torch.Tensor:
    return x.mean() if how == "tensor" else x


def precondition_scale(cfg: STAR, v, rsqrt_v):
    """What the learned step is multiplied by: ``1/sqrt(v + 1e-6)`` (``divide``, the paper's)
    or ``sqrt(v) / sqrt(v + eps)`` (``ratio``)."""
    if cfg.precondition_mode == "ratio":
        return torch.sqrt(v).mul_(torch.rsqrt(v + cfg.precondition_epsilon))
    return rsqrt_v


def step_size(cfg: STAR, c):
    """``k = exp(R tanh(lambda_c c / R))`` (see :meth:`lopt.optimizers.STAR.step_size`)."""
    c = _aggregate(c, cfg.step_size_aggregation)
    r = cfg.step_size_range
    return torch.exp(r * torch.tanh(cfg.step_size_multiplier * c / r))


def star_delta(cfg: STAR, outs, p, g, st, rsqrt_v) -> torch.Tensor:
    """STAR: ``delta = step_scale (-k (s_bb + s_nom) - w_eff * p)``, each term behind its switch.

    Terms are subtracted in place from one buffer (``sub_(x, alpha=c)`` is ``delta - c * x``).
    Controller outputs follow ``d, m`` in the order ``n, r, c``, one for each switch that is on.
    """
    extra = iter(outs[2:])
    n = next(extra) if cfg.nominal_controller else None
    r = next(extra) if cfg.regularization_controller else None
    k = step_size(cfg, next(extra)) if cfg.step_size_controller else None
    if cfg.step_multiplier > 0:
        s_bb = blackbox_step(cfg, outs)
        if cfg.precondition:
            s_bb.mul_(precondition_scale(cfg, st["v"], rsqrt_v))
        delta = s_bb.neg_()
    else:
        delta = torch.zeros_like(p)
    if cfg.nominal != "none" and cfg.alpha > 0:
        direction = nominal_direction(cfg.nominal, g, st["m"], rsqrt_v)
        if n is not None:
            n = _aggregate(n, cfg.nominal_controller_aggregation)
            step = torch.exp(cfg.nominal_controller_multiplier * n).mul_(cfg.alpha)
            delta.sub_(step * direction)
        else:
            delta.sub_(direction, alpha=cfg.alpha)
    if k is not None:
        delta.mul_(k)
    if cfg.weight_decay > 0:
        w_eff = cfg.effective_weight_decay
        if k is not None and cfg.decay_mode == "scaled":
            w_eff = w_eff * k
        if r is not None:
            r = _aggregate(r, cfg.regularization_controller_aggregation)
            w_eff = w_eff * torch.exp(cfg.regularization_controller_multiplier * r)
        if isinstance(w_eff, torch.Tensor):
            delta.sub_(w_eff * p)
        else:
            delta.sub_(p, alpha=w_eff)
    if cfg.step_scale != 1.0:
        delta.mul_(cfg.step_scale)
    return delta


def blackbox_delta(cfg: Blackbox, outs, p, g, st, rsqrt_v) -> torch.Tensor:
    """Blackbox: ``delta = -s_bb``."""
    del p, g, st, rsqrt_v
    return blackbox_step(cfg, outs).neg_()


LEAF_DELTA = {"star": star_delta, "blackbox": blackbox_delta}
