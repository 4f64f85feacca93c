"""Accumulators and the 28 + 11 features, in torch, mirroring :mod:`lopt.optimizers.features`.

Same recipe, same constants (imported, not repeated), same order of floating-point operations
where it matters; see the JAX module for the why of each feature. Two things differ, both for
speed in eager torch, neither for the math:

* accumulators are updated in place (one state tensor per accumulator, as torch optimizers do);
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
    ADAM_EPS,
    FACTORED_EPS,
    NUM_TENSOR_FEATURES,
    RMS_EPS,
    TIME_SCALES,
    factored_dims,
)

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
    """The meta-learned decays as tensors on one device, each with its ``1 - decay``.

    ``momentum`` and ``factored`` have shape (3,), ``rms`` shape ().
    """

    momentum: torch.Tensor
    momentum_c: torch.Tensor
    rms: torch.Tensor
    rms_c: torch.Tensor
    factored: torch.Tensor
    factored_c: torch.Tensor


def make_decays(momentum, rms, factored, device) -> Decays:
    """``1 - decay`` is computed in float32 from the float32 decay, as the JAX code does."""
    t = lambda x: torch.tensor(np.array(x, dtype=np.float32), device=device)
    m, r, f = t(momentum), t(rms), t(factored)
    return Decays(m, 1.0 - m, r, 1.0 - r, f, 1.0 - f)


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


def update_accumulators(st: dict, g: torch.Tensor, decays: Decays) -> None:
    """In place: ``acc <- decay * acc + (1 - decay) * stat`` with the current gradient."""
    ndim = g.dim()
    g1 = g.unsqueeze(0)
    st["m"].mul_(_stack(decays.momentum, ndim)).add_(_stack(decays.momentum_c, ndim) * g1)
    gg = g * g
    st["v"].mul_(decays.rms).add_(decays.rms_c * gg)
    g2 = gg.add_(FACTORED_EPS)  # g^2 + eps, reusing the buffer (v already read it)
    dims = factored_dims(tuple(g.shape))
    if dims is None:
        st["row"].mul_(_stack(decays.factored, ndim)).add_(
            _stack(decays.factored_c, ndim) * g2.unsqueeze(0)
        )
    else:
        d0, d1 = dims
        bf, bfc = _stack(decays.factored, ndim - 1), _stack(decays.factored_c, ndim - 1)
        st["row"].mul_(bf).add_(bfc * g2.mean(dim=d1).unsqueeze(0))
        st["col"].mul_(bf).add_(bfc * g2.mean(dim=d0).unsqueeze(0))


class LeafFeatures(NamedTuple):
    """Feature channels of one tensor, not yet normalized.

    ``main``: ``(K, *shape)`` buffer of full-size channels whose canonical indices are
    ``main_index``; ``sides``: ``(indices, stack)`` pairs of reduced-shape channels that
    broadcast against ``shape`` (``stack`` is ``(k, *broadcast_shape)``); ``rms``: the (28,)
    RMS of every channel over the whole tensor; ``rsqrt_v``: ``1/sqrt(v + 1e-6)`` (a view into
    ``main``), which STAR's nominal term and preconditioning reuse.
    """

    main: torch.Tensor
    main_index: tuple[int, ...]
    sides: list
    rms: torch.Tensor
    rsqrt_v: torch.Tensor


def _mean_square(stack: torch.Tensor) -> torch.Tensor:
    """``mean(c^2)`` of every channel of a ``(k, ...)`` stack, without a squared copy."""
    flat = stack.reshape(stack.shape[0], -1)
    return torch.einsum("kn,kn->k", flat, flat) / flat.shape[1]


def leaf_features(p: torch.Tensor, g: torch.Tensor, st: dict) -> LeafFeatures:
    """The 28 features of spec section 3 from the updated accumulators (see the JAX twin)."""
    shape = tuple(g.shape)
    m, v = st["m"], st["v"]
    dims = factored_dims(shape)
    main_index = UNFACTORED_MAIN if dims is None else FACTORED_MAIN
    main = torch.empty((len(main_index), *shape), dtype=torch.float32, device=g.device)
    main[0].copy_(g)
    main[1].copy_(p)
    main[2:5].copy_(m)
    main[5].copy_(v)
    rsqrt_v = torch.add(v, ADAM_EPS, out=main[9]).rsqrt_()
    torch.mul(m, rsqrt_v, out=main[6:9])
    sides = []
    if dims is None:
        full = st["row"]  # (3, *shape): the full EMA fills the row, column and factored slots
        rsqrt_full = (full + FACTORED_EPS).rsqrt_()
        torch.mul(g.unsqueeze(0), rsqrt_full, out=main[FAC_G:FAC_G + 3])
        main[ROW:ROW + 3].copy_(full)
        main[COL:COL + 3].copy_(full)
        main[RSQRT_ROW:RSQRT_ROW + 3].copy_(rsqrt_full)
        main[RSQRT_COL:RSQRT_COL + 3].copy_(rsqrt_full)
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
        # fac_g = g * row_factor * col_factor, multiplied in that order (as in JAX)
        torch.mul(g.unsqueeze(0), row_factor, out=main[10:13]).mul_(col_factor)
        torch.mul(m, row_factor, out=main[13:16]).mul_(col_factor)
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
