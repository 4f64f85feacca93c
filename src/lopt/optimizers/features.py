"""Accumulators and the 39-input feature recipe of the Adafactor-MLP learned optimizer.

Written once, shared by :class:`~lopt.optimizers.Blackbox` and :class:`~lopt.optimizers.STAR`
(spec section 3). Per parameter tensor we keep, with meta-learned decays and no bias
correction, updated with the current gradient *before* features are computed:

* 3 momenta ``m_i <- b_i m_i + (1 - b_i) g`` (decays 0.9, 0.99, 0.999),
* 1 second moment ``v <- b_v v + (1 - b_v) g^2`` (0.999),
* 3 Adafactor-style factored second moments (0.9, 0.99, 0.999): for tensors with two or more
  dimensions, EMAs of the mean of ``g^2`` along the largest dimension ("row" statistics) and
  along the second largest ("column" statistics); for 0/1-dim tensors a full EMA of ``g^2``.

From them, 28 per-coordinate features (each divided by its RMS over the whole tensor) plus 11
time features ``tanh(t / tau - 1)`` that are the same for every coordinate.

Nothing here materializes a ``[num_params, num_features]`` matrix: features are returned as a
list of arrays that broadcast against the parameter, together with their RMS normalizers, and
:mod:`lopt.optimizers.mlp` folds the normalizers into the first-layer weights so XLA fuses the
whole per-coordinate network into one loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_TENSOR_FEATURES = 28
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
NUM_TIME_FEATURES = len(TIME_SCALES)
NUM_INPUTS = NUM_TENSOR_FEATURES + NUM_TIME_FEATURES  # 39

ADAM_EPS = 1e-6  # inside sqrt(v + eps) for the "Adam" features and preconditioning
FACTORED_EPS = 1e-30  # added to g^2, as in Adafactor
#: factored statistics below this carry no meta-gradient (see ``_no_gradient_if_tiny``)
TINY_STATISTIC = 1e-20
RMS_EPS = 1e-5  # feature normalization: f / sqrt(mean(f^2) + eps)

# A decay never leaves [DECAY_MIN, DECAY_MAX], whatever theta is: see ``bounded_decay``.
DECAY_MIN = 1e-4
DECAY_MAX = 1.0 - 1e-6


def adam_scale(v: jax.Array) -> jax.Array:
    """``1 / sqrt(v + 1e-6)``: the "Adam" normalization shared by the features, STAR's nominal
    term and its preconditioning. One expression everywhere, so XLA computes it once per
    coordinate in the fused update."""
    return jax.lax.rsqrt(v + ADAM_EPS)


def bounded_decay(base: jax.Array, theta: jax.Array) -> jax.Array:
    """Meta-learned decay that stays inside (0, 1) for every ``theta``.

    The paper uses ``beta = 1 - (1 - beta0) * exp(10 theta)``, which is unbounded below (a
    calibration run drove a momentum decay to -1.05 and never recovered). We use the logistic
    form ``1 - beta = sigmoid(logit(1 - beta0) + 10 theta)``: it equals ``beta0`` at
    ``theta = 0``, agrees with the paper's form to first order for decays close to one
    (``1 - beta ~ (1 - beta0) exp(10 theta)``), and saturates smoothly towards 0 and 1. A final
    clip to ``[1e-4, 1 - 1e-6]`` keeps float32 rounding from producing exactly 0 or 1.
    """
    base = jnp.asarray(base, jnp.float32)
    one_minus = jax.nn.sigmoid(jnp.log1p(-base) - jnp.log(base) + 10.0 * theta)
    return jnp.clip(1.0 - one_minus, DECAY_MIN, DECAY_MAX)


@dataclass(frozen=True)
class AccumulatorConfig:
    """Initial decays of the accumulators (meta-learned around these values)."""

    momentum_decays: tuple[float, float, float] = (0.9, 0.99, 0.999)
    rms_decay: float = 0.999
    factored_decays: tuple[float, float, float] = (0.9, 0.99, 0.999)

    def __post_init__(self):
        for name in ("momentum_decays", "factored_decays"):
            value = tuple(getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} needs exactly 3 decays, got {value}")
            object.__setattr__(self, name, value)
        for d in (*self.momentum_decays, self.rms_decay, *self.factored_decays):
            if not 0.0 < d < 1.0:
                raise ValueError(f"decays must lie in (0, 1), got {d}")

    def init_theta(self) -> dict:
        """Offsets of every decay, zero at meta-initialization."""
        return {
            "momentum": jnp.zeros((3,), jnp.float32),
            "rms": jnp.zeros((), jnp.float32),
            "factored": jnp.zeros((3,), jnp.float32),
        }

    def decays(self, theta: dict) -> dict:
        return {
            "momentum": bounded_decay(jnp.array(self.momentum_decays), theta["momentum"]),
            "rms": bounded_decay(jnp.array(self.rms_decay), theta["rms"]),
            "factored": bounded_decay(jnp.array(self.factored_decays), theta["factored"]),
        }


class LeafState(NamedTuple):
    """Accumulators of one parameter tensor (scalars are stored as shape ``(1,)``).

    ``row``/``col`` hold factored statistics of shape ``(3, *shape without one dim)``; for
    tensors with fewer than two dimensions ``row`` is the full EMA ``(3, *shape)`` and ``col``
    is an empty ``(3, 0)`` array.
    """

    m: jax.Array
    v: jax.Array
    row: jax.Array
    col: jax.Array


def factored_dims(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Indices ``(d0, d1)`` of the second-largest and largest dimensions, or None (<2 dims)."""
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-2]), int(order[-1])


#: a minor (last) dimension below this is slow to loop over (see ``compute_layout``)
MIN_MINOR_DIM = 16


def compute_layout(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis order in which a tensor's update is computed, or None for its own order.

    XLA's CPU loops vectorize the minor (last) dimension: a tensor whose last dimension is
    small, such as a classifier's ``(hidden, 10)`` output kernel or a convolution's
    ``(3, 3, 32, 8)``, leaves most of every vector lane empty. Measured on STAR's update (16
    vmapped copies, 2 cores): ``(32, 10)`` 28 ns per coordinate against 11 ns for
    ``(10, 32)``, ``(256, 10)`` 21 vs 5.0, ``(128, 8)`` 20 vs 5.2; a last dimension of 16 or
    more is close to even (``(64, 16)`` 6.4 vs 5.4, ``(64, 24)`` 5.1 vs 4.9). Such a tensor
    is computed with its largest dimension moved last, where that dimension is long enough
    to gain (``(3, 3, 8, 4)`` stays as it is: moving its 8 lost time). With the transposes
    in and out: ``(32, 10)`` 28 -> 16 ns, ``(3, 3, 32, 8)`` 21 -> 12 ns, ``(256, 10)`` without
    vmap 29 -> 10.5 ns (``(10, 256)``: 7 ns); PES meta-training on the digits MLP family,
    whose output kernel is ``(32, 10)``, ~7% more inner steps per second. Per coordinate it is
    the same arithmetic; only the order of the sums behind the RMS normalizers and the
    factored statistics changes (float rounding). Moving the largest axis keeps
    :func:`factored_dims` pointing at the same axes, so the row statistics keep their
    layout.
    """
    if len(shape) < 2 or shape[-1] >= MIN_MINOR_DIM:
        return None
    largest = factored_dims(shape)[1]
    if shape[largest] < MIN_MINOR_DIM:  # no better axis: the transposes would cost only
        return None
    return tuple(i for i in range(len(shape)) if i != largest) + (largest,)


def as_tensor(x: jax.Array) -> jax.Array:
    """Scalars become shape ``(1,)`` tensors (spec: scalars are treated as 1-vectors)."""
    return x.reshape((1,)) if x.ndim == 0 else x


def init_leaf_state(p: jax.Array) -> LeafState:
    p = as_tensor(jnp.asarray(p))
    shape = p.shape
    zeros = lambda s: jnp.zeros(s, jnp.float32)
    dims = factored_dims(shape)
    if dims is None:
        row, col = zeros((3, *shape)), zeros((3, 0))
    else:
        d0, d1 = dims
        row = zeros((3, *[n for i, n in enumerate(shape) if i != d1]))
        col = zeros((3, *[n for i, n in enumerate(shape) if i != d0]))
    return LeafState(m=zeros((3, *shape)), v=zeros(shape), row=row, col=col)


def state_to_layout(st: LeafState, shape: tuple[int, ...], *, back: bool = False) -> LeafState:
    """Accumulators of a tensor of ``shape`` moved into its :func:`compute_layout` (or, with
    ``back=True``, from it back into the tensor's own order). Row statistics need no move:
    they lack the moved axis."""
    perm = compute_layout(shape)
    if perm is None:
        return st
    d0, moved = factored_dims(shape)
    in_col = moved - (d0 < moved)  # the moved axis among the column statistics' axes

    def move(x, axis):
        return jnp.moveaxis(x, -1, axis) if back else jnp.moveaxis(x, axis, -1)

    return LeafState(
        m=move(st.m, 1 + moved), v=move(st.v, moved), row=st.row, col=move(st.col, 1 + in_col)
    )


def _stack(decay: jax.Array, ndim: int) -> jax.Array:
    """Decays of shape (3,) broadcast against ``(3, *shape)``."""
    return decay.reshape((3,) + (1,) * ndim)


def update_accumulators(state: LeafState, g: jax.Array, decays: dict) -> LeafState:
    """EMA updates with the current gradient (no bias correction)."""
    ndim = g.ndim
    bm = _stack(decays["momentum"], ndim)
    bv = decays["rms"]
    m = bm * state.m + (1.0 - bm) * g[None]
    g2 = g * g + FACTORED_EPS
    v = bv * state.v + (1.0 - bv) * (g * g)
    dims = factored_dims(g.shape)
    if dims is None:
        bf = _stack(decays["factored"], ndim)
        row = bf * state.row + (1.0 - bf) * g2[None]
        col = state.col
    else:
        d0, d1 = dims
        bf = _stack(decays["factored"], ndim - 1)
        row = bf * state.row + (1.0 - bf) * jnp.mean(g2, axis=d1)[None]
        col = bf * state.col + (1.0 - bf) * jnp.mean(g2, axis=d0)[None]
    return LeafState(m=m, v=v, row=row, col=col)


def channel_rms(channels: list) -> jax.Array:
    """RMS over the whole tensor of every channel, with one variadic reduction per shape.

    Separate ``mean(f**2)`` reductions cost ~60 ms of XLA compile time each (28 per tensor
    made compiling an update take seconds) and one pass over memory each. Channels of the
    same shape are reduced together by one variadic ``lax.reduce``, which fuses their
    producers and reads every input once. Factored statistics keep their reduced shape: the
    mean of a channel broadcast along a missing axis equals the mean of the small array, and
    reducing it small avoids a full-size pass (measured ~20% faster update than broadcasting
    everything into one reduction).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(channels):
        groups.setdefault(tuple(c.shape), []).append(i)
    totals: list = [None] * len(channels)
    sizes = np.ones(len(channels), np.float32)
    for group_shape, idx in groups.items():
        ndim = len(group_shape)
        # Reduce the minor (last) axis in the variadic reduction and the rest with one small
        # sum over the stacked partial sums: XLA's CPU code sums a minor axis with vector
        # accumulators, while a reduction over all axes at once became one sequential float32
        # accumulator per channel (2x slower, and ~1e-3 relative error on a 784x1024 tensor
        # against float64; ~2e-7 this way).
        sums = _sums_of_squares(tuple(channels[i] for i in idx), (ndim - 1,) if ndim else ())
        if ndim > 1:
            sums = unstack_leading(jnp.sum(jnp.stack(sums), axis=tuple(range(1, ndim))))
        for j, i in enumerate(idx):
            totals[i] = sums[j]
            sizes[i] = float(np.prod(group_shape)) if group_shape else 1.0
    # one vectorized sqrt for all channels: a scalar sqrt per channel compiled to one tiny XLA
    # kernel each (28 per tensor, most of the update's kernels)
    return jnp.sqrt(jnp.stack(totals) / sizes + RMS_EPS)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sums_of_squares(arrays: tuple, axes: tuple[int, ...]) -> tuple:
    """``sum(a**2)`` over ``axes`` of each array (all one shape): one variadic reduction.

    Differentiable by hand: JAX's own derivative of a variadic ``lax.reduce`` fails when an
    input's tangent is a symbolic zero (a channel that does not depend on theta, such as the
    gradient, under truncated backpropagation) and cannot be transposed for reverse mode;
    the tangent ``sum(2 a da)`` is written with ordinary sums instead.
    """
    squares = tuple(jnp.square(a) for a in arrays)
    zeros = tuple(jnp.zeros((), jnp.float32) for _ in arrays)
    return jax.lax.reduce(
        squares, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)), axes
    )


@_sums_of_squares.defjvp
def _sums_of_squares_jvp(axes, primals, tangents):
    (arrays,), (d_arrays,) = primals, tangents
    out = _sums_of_squares(arrays, axes)
    d_out = tuple(jnp.sum(2.0 * a * da, axis=axes) for a, da in zip(arrays, d_arrays, strict=True))
    return out, d_out


class LeafFeatures(NamedTuple):
    """Feature channels of one tensor, not yet normalized.

    ``channels`` is a list of 28 arrays, each broadcastable to the parameter's shape (factored
    statistics keep their reduced shape and broadcast along the missing dimension), and
    ``rms`` the (28,) vector of their RMS over the whole tensor.
    """

    channels: list
    rms: jax.Array


def _no_gradient_if_tiny(stat: jax.Array) -> jax.Array:
    """``stat`` unchanged, without a derivative where it is below ``TINY_STATISTIC``: for the
    factored statistics and their ratio to the mean, before a reciprocal square root.

    A factored second moment that has seen only zero gradients (a row of a first layer fed
    by an always-blank input, such as digits' corner pixels) is ~1e-31, where the derivative
    of its reciprocal square root (~1e46) overflows float32: the meta-gradient of truncated
    backpropagation then came out non-finite on every such task. Values, and so the update,
    stay bit for bit the same; only the meta-gradient through these near-zero statistics is
    dropped.
    """
    return jnp.where(stat > TINY_STATISTIC, stat, jax.lax.stop_gradient(stat))


def unstack_leading(x: jax.Array) -> list[jax.Array]:
    """``[x[0], x[1], ...]`` as one ``lax.split``, whose derivative (transposed: one
    concatenation) is a single operation; indexing's is one zero-padded copy per entry, which
    made the meta-gradient of an update ~150 extra small XLA kernels on a digits MLP."""
    return [jnp.squeeze(part, 0) for part in jax.lax.split(x, (1,) * x.shape[0])]


def leaf_features(p: jax.Array, g: jax.Array, st: LeafState) -> LeafFeatures:
    """The 28 per-coordinate features of spec section 3, from updated accumulators."""
    shape = g.shape
    rsqrt_v = adam_scale(st.v)
    adam = st.m * rsqrt_v[None]

    dims = factored_dims(shape)
    if dims is None:
        full = st.row  # (3, *shape)
        row_feat = col_feat = full
        rsqrt_full = jax.lax.rsqrt(_no_gradient_if_tiny(full) + FACTORED_EPS)
        rsqrt_row = rsqrt_col = rsqrt_full
        fac_g = g[None] * rsqrt_full
        fac_m = st.m * rsqrt_full
    else:
        d0, d1 = dims
        # Row stats lack d1; column stats lack d0. Re-insert the missing axis to broadcast.
        row_feat = jnp.expand_dims(st.row, 1 + d1)
        col_feat = jnp.expand_dims(st.col, 1 + d0)
        # Adafactor reconstruction v ~ row * col / mean(row): normalize rows by their mean.
        d0_in_row = d0 if d0 < d1 else d0 - 1
        row, col = _no_gradient_if_tiny(st.row), _no_gradient_if_tiny(st.col)
        row_mean = jnp.mean(row, axis=1 + d0_in_row, keepdims=True)
        ratio = _no_gradient_if_tiny(row / (row_mean + FACTORED_EPS))
        row_factor = jnp.expand_dims(jax.lax.rsqrt(ratio), 1 + d1)
        col_factor = jnp.expand_dims(jax.lax.rsqrt(col + FACTORED_EPS), 1 + d0)
        rsqrt_row = jax.lax.rsqrt(jnp.expand_dims(row, 1 + d1) + FACTORED_EPS)
        rsqrt_col = col_factor  # the column factor is the reciprocal sqrt of the column stats
        # Multiply the small factors in one at a time, never forming row_factor * col_factor:
        # that full-size product would be shared by several consumers, and XLA wrote it to
        # memory (a (3, *shape) temporary in the compiled update; gone with this form).
        fac_g = g[None] * row_factor * col_factor  # (3, *shape)
        fac_m = st.m * row_factor * col_factor  # momentum i normalized by factored stat i

    # Order: g, p, m(3), v, adam(3), rsqrt_v, fac_g(3), row(3), col(3), rsqrt_row(3),
    # rsqrt_col(3), fac_m(3) = 28 channels.
    channels = [g, p, *unstack_leading(st.m), st.v]
    channels += [*unstack_leading(adam), rsqrt_v]
    for arr in (fac_g, row_feat, col_feat, rsqrt_row, rsqrt_col, fac_m):
        channels += unstack_leading(arr)
    assert len(channels) == NUM_TENSOR_FEATURES
    rms = channel_rms(channels)
    return LeafFeatures(channels=channels, rms=rms)


#: tensor-level inputs added by ``tensor_features=True`` (see :func:`tensor_statistics`)
NUM_TENSOR_STATISTICS = 6
#: indices of the three "Adam" ratio channels ``m_i / sqrt(v + 1e-6)`` in the 28 channels
ADAM_CHANNELS = (6, 7, 8)


def tensor_statistics(g: jax.Array, st: LeafState, rms: jax.Array) -> jax.Array:
    """Six numbers per tensor, the same for each of its coordinates: how consistent its
    gradients are, which the per-coordinate features cannot say (each is divided by its RMS
    over the tensor, so the tensor's overall level is gone).

    * ``log rms(m_i / sqrt(v + 1e-6))`` for the three momenta: ~0 when the gradient points
      the same way step after step, strongly negative when it is mostly noise;
    * ``cos(g, m_i)``: > 0 while the momenta agree with the new gradient, < 0 when the last
      steps overshot (the signal a learned step size needs to back off).

    Both are dimensionless, so they mean the same on every task, and cost three dot products.
    """
    log_rms = jnp.log(rms[jnp.array(ADAM_CHANNELS)])
    gg = jnp.sum(g * g)
    cos = [
        jnp.sum(g * m) * jax.lax.rsqrt(gg * jnp.sum(m * m) + 1e-30)
        for m in unstack_leading(st.m)
    ]
    return jnp.concatenate([log_rms, jnp.stack(cos)])


def time_features(step: jax.Array) -> jax.Array:
    """``tanh(t / tau - 1)`` for the 11 time scales; identical for every coordinate."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.tanh(t / jnp.array(TIME_SCALES, jnp.float32) - 1.0)
