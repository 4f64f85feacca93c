"""Accumulators and the 28 + 11 features, in torch, mirroring :mod:`lopt.optimizers.features`.

Same recipe, same constants (imported, not repeated), same order of floating-point operations
where it matters; see the JAX module for the why of each feature. Two things differ, both for
speed in eager torch, neither for the math:

* accumulators are updated in place (one state tensor per accumulator, as torch optimizers do),
  as ``lerp``s (the same value up to float32 rounding);
* the full-size feature channels are written into one ``(K, *shape)`` buffer so the first MLP
  layer is one matrix product; channels that keep a reduced shape (Adafactor row/column
  statistics of tensors with 2+ dims) stay small and are added by broadcasting, exactly as the
  JAX code broadcasts them.

Scalars are handled as shape ``(1,)`` tensors, as in JAX.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lopt.optimizers.features import (
    ADAM_CHANNELS,
    ADAM_EPS,
    FACTORED_EPS,
    NUM_TENSOR_FEATURES,
    RMS_EPS,
    TIME_SCALES,
    factored_dims,
)
from lopt.torch.workspace import Workspace

# Canonical channel order of the JAX recipe (lopt.optimizers.features.leaf_features):
# 0 g, 1 p, 2-4 m, 5 v, 6-8 adam, 9 rsqrt_v, 10-12 fac_g, 13-15 row, 16-18 col,
# 19-21 rsqrt_row, 22-24 rsqrt_col, 25-27 fac_m.
G, P, M, V, ADAM, RSQRT_V, FAC_G, ROW, COL, RSQRT_ROW, RSQRT_COL, FAC_M = (
    0, 1, 2, 5, 6, 9, 10, 13, 16, 19, 22, 25,
)
# Full-size channels of a factored tensor, in buffer order.
FACTORED_MAIN = (G, P, M, M + 1, M + 2, V, ADAM, ADAM + 1, ADAM + 2, RSQRT_V,
                 FAC_G, FAC_G + 1, FAC_G + 2, FAC_M, FAC_M + 1, FAC_M + 2)
ROW_SIDE = (ROW, ROW + 1, ROW + 2, RSQRT_ROW, RSQRT_ROW + 1, RSQRT_ROW + 2)
COL_SIDE = (COL, COL + 1, COL + 2, RSQRT_COL, RSQRT_COL + 1, RSQRT_COL + 2)
UNFACTORED_MAIN = tuple(range(NUM_TENSOR_FEATURES))


class Decays(NamedTuple):
    """The meta-learned decays on one device, each with its ``1 - decay``.

    ``momentum`` and ``factored`` are (3,) tensors; ``rms`` is a Python float (a scalar
    argument of in-place ops). All values are float32, ``1 - decay`` computed in float32 from
    the float32 decay, as in the JAX code.
    """

    momentum: torch.Tensor
    momentum_c: torch.Tensor
    rms: float
    rms_c: float
    factored: torch.Tensor
    factored_c: torch.Tensor


def make_decays(momentum, rms, factored, device) -> Decays:
    f32 = lambda x: np.array(x, dtype=np.float32)
    t = lambda x: torch.tensor(f32(x), device=device)
    m, r, f = f32(momentum), f32(rms), f32(factored)
    one = np.float32(1.0)
    return Decays(t(m), t(one - m), float(r), float(one - r), t(f), t(one - f))


def as_tensor_shape(shape: torch.Size) -> tuple[int, ...]:
    """Scalars are treated as shape ``(1,)`` tensors (spec section 3)."""
    return (1,) if len(shape) == 0 else tuple(shape)


def init_leaf_state(shape: tuple[int, ...], device) -> dict:
    """Zero accumulators for a parameter of ``shape`` (already ``as_tensor_shape``-d).

    ``row``/``col`` follow the JAX layout: factored statistics ``(3, *shape without one dim)``,
    or for 0/1-dim tensors ``row`` is the full EMA ``(3, *shape)`` and ``col`` is ``(3, 0)``.
    ``step`` counts this parameter's updates (it drives the time features).
    """
    zeros = lambda *s: torch.zeros(s, dtype=torch.float32, device=device)
    dims = factored_dims(shape)
    if dims is None:
        row, col = zeros(3, *shape), zeros(3, 0)
    else:
        d0, d1 = dims
        row = zeros(3, *[n for i, n in enumerate(shape) if i != d1])
        col = zeros(3, *[n for i, n in enumerate(shape) if i != d0])
    return {
        "step": torch.zeros((), dtype=torch.int64, device=device),
        "m": zeros(3, *shape),
        "v": zeros(*shape),
        "row": row,
        "col": col,
    }


def _stack(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-accumulator values of shape (3,) broadcast against ``(3, *shape)``."""
    return x.view((3,) + (1,) * ndim)


def update_accumulators(st: dict, g: torch.Tensor, decays: Decays, ws: Workspace) -> None:
    """In place: ``acc <- decay * acc + (1 - decay) * stat`` with the current gradient.

    Written as ``lerp``/``add(alpha=)`` (one pass each over memory); the result equals the JAX
    expression up to float32 rounding of the same terms.
    """
    ndim = g.dim()
    st["m"].lerp_(g.unsqueeze(0), _stack(decays.momentum_c, ndim))
    g2 = torch.mul(g, g, out=ws.take(*g.shape))
    st["v"].mul_(decays.rms).add_(g2, alpha=decays.rms_c)
    g2.add_(FACTORED_EPS)  # the factored statistics average g^2 + 1e-30
    dims = factored_dims(tuple(g.shape))
    if dims is None:
        st["row"].lerp_(g2.unsqueeze(0), _stack(decays.factored_c, ndim))
    else:
        d0, d1 = dims
        bfc = _stack(decays.factored_c, ndim - 1)
        st["row"].lerp_(g2.mean(dim=d1).unsqueeze(0), bfc)
        st["col"].lerp_(g2.mean(dim=d0).unsqueeze(0), bfc)


class LeafFeatures(NamedTuple):
    """Feature channels of one tensor, not yet normalized.

    ``main``: ``(K, *shape)`` buffer of full-size channels whose canonical indices are
    ``main_index``; ``sides``: empty, or for factored tensors the ``(indices, stack)`` pairs of
    the row and the column statistics, reduced-shape channels that broadcast against ``shape``
    (``stack`` is ``(6, *broadcast_shape)``); ``rms``: the (28,)
    RMS of every channel over the whole tensor; ``rsqrt_v``: ``1/sqrt(v + 1e-6)`` (a view into
    ``main``), which STAR's nominal term and preconditioning reuse.
    """

    main: torch.Tensor
    main_index: tuple[int, ...]
    sides: list
    rms: torch.Tensor
    rsqrt_v: torch.Tensor


def _mean_square(stack: torch.Tensor) -> torch.Tensor:
    """``mean(c^2)`` of every channel of a ``(k, ...)`` stack: one reduction, no squared copy."""
    flat = stack.reshape(stack.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1).square_().div_(flat.shape[1])


def leaf_features(p: torch.Tensor, g: torch.Tensor, st: dict, ws: Workspace) -> LeafFeatures:
    """The 28 features of spec section 3 from the updated accumulators (see the JAX twin)."""
    shape = tuple(g.shape)
    m, v = st["m"], st["v"]
    dims = factored_dims(shape)
    main_index = UNFACTORED_MAIN if dims is None else FACTORED_MAIN
    # Buffer rows 0-9 are channels 0-9 in both layouts (g, p, m, v, adam, rsqrt_v).
    main = ws.take(len(main_index), *shape)
    main[0].copy_(g)
    main[1].copy_(p)
    main[2:5].copy_(m)
    main[5].copy_(v)
    rsqrt_v = torch.add(v, ADAM_EPS, out=main[9]).rsqrt_()
    torch.mul(m, rsqrt_v, out=main[6:9])
    sides = []
    if dims is None:
        full = st["row"]  # (3, *shape): the full EMA fills the row, column and factored slots
        rsqrt_full = torch.add(full, FACTORED_EPS, out=main[RSQRT_ROW:RSQRT_ROW + 3]).rsqrt_()
        main[RSQRT_COL:RSQRT_COL + 3].copy_(rsqrt_full)
        main[ROW:ROW + 3].copy_(full)
        main[COL:COL + 3].copy_(full)
        torch.mul(g.unsqueeze(0), rsqrt_full, out=main[FAC_G:FAC_G + 3])
        torch.mul(m, rsqrt_full, out=main[FAC_M:FAC_M + 3])
    else:
        d0, d1 = dims
        row, col = st["row"], st["col"]
        row_feat = row.unsqueeze(1 + d1)
        col_feat = col.unsqueeze(1 + d0)
        d0_in_row = d0 if d0 < d1 else d0 - 1
        row_mean = row.mean(dim=1 + d0_in_row, keepdim=True)
        row_factor = (row / (row_mean + FACTORED_EPS)).rsqrt_().unsqueeze(1 + d1)
        col_factor = (col + FACTORED_EPS).rsqrt_().unsqueeze(1 + d0)
        rsqrt_row = (row_feat + FACTORED_EPS).rsqrt_()
        # fac = x * (row_factor * col_factor): the full-size product once, for g and m (JAX
        # multiplies the factors in one at a time; same value up to float32 rounding).
        both = torch.mul(row_factor, col_factor, out=ws.take(3, *shape))
        torch.mul(g.unsqueeze(0), both, out=main[10:13])  # buffer rows 10-12: fac_g
        torch.mul(m, both, out=main[13:16])  # buffer rows 13-15: fac_m
        sides.append((ROW_SIDE, torch.cat([row_feat, rsqrt_row])))
        sides.append((COL_SIDE, torch.cat([col_feat, col_factor])))
    rms = torch.empty((NUM_TENSOR_FEATURES,), dtype=torch.float32, device=g.device)
    rms[list(main_index)] = _mean_square(main)
    for index, stack in sides:
        rms[list(index)] = _mean_square(stack)
    rms.add_(RMS_EPS).sqrt_()
    return LeafFeatures(main=main, main_index=main_index, sides=sides, rms=rms, rsqrt_v=rsqrt_v)


def time_scales(device) -> torch.Tensor:
    return torch.tensor(TIME_SCALES, dtype=torch.float32, device=device)


def time_features(step: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``tanh(t / tau - 1)`` for the 11 time scales, from this parameter's step count."""
    return torch.tanh(step.to(torch.float32) / scales - 1.0)


def tensor_statistics(g: torch.Tensor, st: dict, rms: torch.Tensor) -> torch.Tensor:
    """The six tensor-level inputs of ``tensor_features=True`` (see the JAX twin
    :func:`lopt.optimizers.features.tensor_statistics`): ``log rms`` of the three Adam ratio
    channels and ``cos(g, m_i)`` for the three momenta."""
    log_rms = torch.log(rms[list(ADAM_CHANNELS)])
    m = st["m"].reshape(3, -1)
    flat = g.reshape(1, -1)
    gg = torch.sum(flat * flat)
    dots = torch.sum(m * flat, dim=1)
    mm = torch.sum(m * m, dim=1)
    return torch.cat([log_rms, dots * torch.rsqrt(gg * mm + 1e-30)])
