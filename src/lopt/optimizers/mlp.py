"""The per-coordinate MLP shared by every coordinate of every tensor, written fused.

A naive implementation stacks the features into a ``[num_params, 39]`` matrix and multiplies;
that costs a full extra copy of the parameters per feature and measured ~7x slower here. We
instead write each hidden unit as a weighted sum of feature arrays,
``h_j = relu(sum_k (W[k, j] / rms_k) f_k + b'_j)``, where the RMS normalizers are folded into the
weights (scalars) and the 11 time features, equal for every coordinate, are folded into the bias
``b'_j``. XLA fuses this into one elementwise loop over the tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> dict:
    """Truncated-normal weights with std ``1/sqrt(fan_in)``, zero biases.

    Returns ``{"w0": (sizes[0], sizes[1]), "b0": ..., "w1": ..., ...}``.
    """
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        std = 1.0 / jnp.sqrt(fan_in)
        w = jax.random.truncated_normal(keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
        params[f"w{i}"] = w * std
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def num_layers(mlp: dict) -> int:
    return len([k for k in mlp if k.startswith("w")])


def fused_mlp(
    mlp: dict,
    channels: Sequence[jax.Array],
    rms: jax.Array,
    global_inputs: jax.Array,
    shape: tuple[int, ...],
) -> list[jax.Array]:
    """Apply the MLP to every coordinate; returns one array of ``shape`` per output.

    Args:
        mlp: weights from :func:`init_mlp`; the first layer has ``len(channels) +
            len(global_inputs)`` inputs, in that order.
        channels: per-coordinate feature arrays, each broadcastable to ``shape``.
        rms: normalizer of each channel (the channel is divided by it).
        global_inputs: inputs that are the same for every coordinate (time features).
        shape: the parameter's shape.
    """
    n_ch = len(channels)
    w0 = mlp["w0"]
    coef = w0[:n_ch] / rms[:, None]  # (n_ch, hidden)
    bias = mlp["b0"] + global_inputs @ w0[n_ch:]
    hidden = _weighted_sums(coef, bias, channels)
    hidden = [jax.nn.relu(jnp.broadcast_to(h, shape)) for h in hidden]
    layers = num_layers(mlp)
    for layer in range(1, layers):
        out = _weighted_sums(mlp[f"w{layer}"], mlp[f"b{layer}"], hidden)
        hidden = out if layer == layers - 1 else [jax.nn.relu(h) for h in out]
    return hidden


@jax.custom_jvp
def _weighted_sums(w: jax.Array, b: jax.Array, inputs: Sequence[jax.Array]) -> list[jax.Array]:
    """``[b[j] + sum_k w[k, j] * inputs[k] for j]``, summed in that order.

    Its derivative (:func:`_weighted_sums_jvp`) is written with tensor products: JAX's own
    derivative of the scalar-times-array form has one reduction over the tensor per weight
    (``dL/dw[k, j] = sum(inputs[k] * dL/dout[j])``), which XLA compiles very slowly: the
    meta-gradient of two STAR updates of a 5x3 tensor took 81 s to compile, 6.5 s with this rule.

    The scalars come out of ``w`` and ``b`` with one ``unstack`` per column instead of one
    indexing operation each (a slice and a squeeze per weight): the same program for XLA, but
    about a third fewer operations to trace, which for a task mixture's meta-training step
    and evaluation (the MLP is written out for every parameter tensor of every task) is
    seconds of start-up.
    """
    weights = [jnp.unstack(column) for column in jnp.unstack(w.T)]
    sums = []
    for w_j, acc in zip(weights, jnp.unstack(b), strict=True):
        for w_kj, x in zip(w_j, inputs, strict=True):
            acc = acc + w_kj * x
        sums.append(acc)
    return sums


@_weighted_sums.defjvp
def _weighted_sums_jvp(primals, tangents):
    """The same sums in the primal (bit for bit); the tangent as two tensor products over the
    inputs stacked to one array, whose transposes (reverse mode, for TBPTT and exact
    meta-gradients) are products too. ``jax.jacfwd`` (the stability analysis) uses it as is."""
    w, b, inputs = primals
    dw, db, dinputs = tangents
    out = _weighted_sums(w, b, inputs)
    shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in inputs))

    def stacked(arrays):
        return jnp.stack([jnp.broadcast_to(x, shape) for x in arrays])

    highest = jax.lax.Precision.HIGHEST  # full float32 products on every backend
    dout = (
        jnp.tensordot(dw, stacked(inputs), axes=(0, 0), precision=highest)
        + jnp.tensordot(w, stacked(dinputs), axes=(0, 0), precision=highest)
        + db.reshape(db.shape + (1,) * len(shape))
    )
    return out, list(jnp.unstack(dout))
