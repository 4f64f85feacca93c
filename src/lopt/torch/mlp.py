"""The per-coordinate MLP in torch, mirroring :func:`lopt.optimizers.mlp.fused_mlp`.

As in JAX, each channel's RMS normalizer is folded into the first-layer weights
(``W[k, j] / rms_k``) and the time features, equal for every coordinate, into its bias. The
full-size channels then enter through one matrix product ``(hidden, K) @ (K, N)``; reduced-shape
channels (row/column statistics) are combined while still small and added by broadcasting.
Every later layer is one ``addmm`` over ``(width, N)``. No Python loop over coordinates.
"""

from __future__ import annotations

import torch

from lopt.torch.features import LeafFeatures


def mlp_outputs(
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    feats: LeafFeatures,
    time_inputs: torch.Tensor,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Outputs ``(num_outputs, *shape)`` of the MLP at every coordinate.

    Args:
        layers: ``[(w0, b0), (w1, b1), ...]`` with ``w_i`` of shape ``(fan_in, fan_out)`` (the
            JAX layout); ``w0`` has 28 channel rows followed by 11 time-feature rows.
        feats: the channels of one tensor (:func:`lopt.torch.features.leaf_features`).
        time_inputs: the (11,) time features.
        shape: the parameter's shape (scalars as ``(1,)``).
    """
    w0, b0 = layers[0]
    n_ch = feats.rms.shape[0]
    coef = w0[:n_ch] / feats.rms[:, None]  # (28, hidden)
    bias = b0 + time_inputs @ w0[n_ch:]
    main = feats.main.reshape(feats.main.shape[0], -1)  # (K, N)
    coef_main = coef[list(feats.main_index)]  # (K, hidden)
    h = torch.addmm(bias[:, None], coef_main.T, main)  # (hidden, N)
    if feats.sides:
        hv = h.view(h.shape[0], *shape)
        for index, stack in feats.sides:
            hv.add_(torch.tensordot(coef[list(index)].T, stack, dims=1))
    h.relu_()
    last = len(layers) - 1
    for i in range(1, len(layers)):
        w, b = layers[i]
        h = torch.addmm(b[:, None], w.T, h)
        if i < last:
            h.relu_()
    return h.view(h.shape[0], *shape)
