"""The per-coordinate MLP in torch, mirroring :func:`lopt.optimizers.mlp.fused_mlp`.

As in JAX, each channel's RMS normalizer is folded into the first-layer weights
(``W[k, j] / rms_k``) and the time features, equal for every coordinate, into its bias. The
full-size channels then enter through one matrix product ``(hidden, K) @ (K, N)``; reduced-shape
channels (row/column statistics) are combined while still small and broadcast once. Every later
layer is one ``addmm`` over ``(width, N)``. No Python loop over coordinates.
"""

from __future__ import annotations

import math

import torch

from lopt.torch.features import LeafFeatures
from lopt.torch.workspace import Workspace


def mlp_outputs(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    feats: LeafFeatures,
    time_inputs: torch.Tensor,
    shape: tuple[int, ...],
    ws: Workspace,
) -> torch.Tensor:
    """Outputs ``(num_outputs, *shape)`` of the MLP at every coordinate (a workspace view).

    Args:
        layers: ``[(w0, b0), (w1, b1), ...]`` with ``w_i`` of shape ``(fan_in, fan_out)`` (the
            JAX layout); ``w0`` has 28 channel rows followed by 11 time-feature rows.
        feats: the channels of one tensor (:func:`lopt.torch.features.leaf_features`).
        time_inputs: the (11,) time features.
        shape: the parameter's shape (scalars as ``(1,)``).
        ws: scratch memory for the hidden activations.
    """
    w0, b0 = layers[0]
    n_ch = feats.rms.shape[0]
    coef = w0[:n_ch] / feats.rms[:, None]  # (28, hidden)
    bias = b0 + time_inputs @ w0[n_ch:]
    hidden, n = w0.shape[1], math.prod(shape)
    h = ws.take(hidden, n)
    hv = h.view(hidden, *shape)
    # Bias and reduced-shape channels first, combined while small, broadcast once into h.
    bias = bias.view(hidden, *([1] * len(shape)))
    if feats.sides:  # factored tensor: row statistics, then column statistics
        row_term, col_term = (
            torch.tensordot(coef[list(index)].T, stack, dims=1) for index, stack in feats.sides
        )
        torch.add(bias + row_term, col_term, out=hv)
    else:
        hv.copy_(bias.expand_as(hv))
    main = feats.main.view(feats.main.shape[0], n)  # (K, N)
    h.addmm_(coef[list(feats.main_index)].T, main)
    h.relu_()
    last = len(layers) - 1
    for i in range(1, len(layers)):
        w, b = layers[i]
        out = torch.addmm(b[:, None], w.T, h, out=ws.take(w.shape[1], n))
        h = out if i == last else out.relu_()
    return h.view(h.shape[0], *shape)
