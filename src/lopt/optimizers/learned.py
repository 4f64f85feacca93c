"""Machinery shared by the Adafactor-MLP learned optimizers: state, update loop, optax adapter.

A subclass only says how the MLP outputs (and the accumulators) become a parameter change:
:class:`~lopt.optimizers.Blackbox` uses the blackbox step alone, :class:`~lopt.optimizers.STAR`
adds a nominal descent term, preconditioning and weight decay.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.optimizers.distance import (
    DistanceState,
    distance_feature,
    init_distance,
    update_distance,
)
from lopt.optimizers.features import (
    NUM_INPUTS,
    NUM_TENSOR_STATISTICS,
    AccumulatorConfig,
    LeafState,
    as_tensor,
    compute_layout,
    init_leaf_state,
    leaf_features,
    state_to_layout,
    tensor_statistics,
    time_features,
    update_accumulators,
)
from lopt.optimizers.mlp import fused_mlp, init_mlp

# How many consecutive non-finite gradients the optax front-end skips before it lets them
# through (see ``as_optax``).
DEFAULT_MAX_NONFINITE_SKIPS = 5


def nonfinite_skips(value) -> int | None:
    """``max_nonfinite_skips`` checked, as both front-ends store it: an int >= 0, or None for
    no guard at all."""
    if value is None:
        return None
    if int(value) < 0:
        raise ValueError(f"max_nonfinite_skips must be >= 0 or None, got {value}")
    return int(value)


class LearnedOptState(NamedTuple):
    """``step``: inner step counter (int32, drives the time features); ``leaves``: one
    :class:`~lopt.optimizers.features.LeafState` per parameter tensor, in the params' tree;
    ``distance``: Prodigy's distance estimate with ``distance_feature`` on, else None."""

    step: jax.Array
    leaves: Any
    distance: DistanceState | None = None


def num_meta_params(theta) -> int:
    """Number of scalar meta-parameters in ``theta``."""
    return int(sum(x.size for x in jax.tree.leaves(theta)))


@dataclasses.dataclass(frozen=True)
class AdafactorMLPBase:
    """Shared fields: the accumulators and the per-coordinate MLP ``39 -> hidden -> outputs``.

    Attributes:
        hidden_sizes: widths of the hidden layers (paper: ``(4, 4)``).
        accumulators: initial decays of the momenta and second moments.
        step_multiplier: ``lambda_s`` in ``s_bb = lambda_s * d * exp(lambda_0 * m)``.
        magnitude_multiplier: ``lambda_0``.
        output_init_scale: multiplies the output layer's initial weights (the MLP's outputs at
            meta-initialization scale with it).
        tensor_features: add six tensor-level inputs (gradient consistency per momentum,
            :func:`~lopt.optimizers.features.tensor_statistics`) to the 39, like the time
            features the same for every coordinate of a tensor; off is the paper's recipe.
        distance_feature: add one input, the same for every coordinate of every tensor:
            Prodigy's estimate ``d`` of the distance to the solution, as ``log(d / unit) / 5``
            with ``unit`` the nominal step (:mod:`lopt.optimizers.distance`). It comes after
            the time features and before the tensor-level inputs. Horizon-free, loss-free;
            costs two float32 copies of the parameters in the state.
    """

    name: ClassVar[str] = "adafactor_mlp"

    hidden_sizes: tuple[int, ...] = (4, 4)
    accumulators: AccumulatorConfig = dataclasses.field(default_factory=AccumulatorConfig)
    step_multiplier: float = 1e-3
    magnitude_multiplier: float = 1e-3
    output_init_scale: float = 1.0
    tensor_features: bool = False
    distance_feature: bool = False

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if isinstance(self.accumulators, dict):
            object.__setattr__(self, "accumulators", AccumulatorConfig(**self.accumulators))
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.step_multiplier < 0:
            raise ValueError(f"step_multiplier must be >= 0, got {self.step_multiplier}")
        if self.magnitude_multiplier < 0:
            raise ValueError(f"magnitude_multiplier must be >= 0, got {self.magnitude_multiplier}")
        if not self.output_init_scale >= 0:
            raise ValueError(f"output_init_scale must be >= 0, got {self.output_init_scale}")

    # -- architecture -------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Direction ``d`` and magnitude ``m``; subclasses add controller outputs."""
        return 2

    @property
    def averages_outputs_per_tensor(self) -> bool:
        """Whether the update uses the mean of an MLP output over each tensor (a per-tensor
        controller); programs that run it compile with
        :func:`lopt.utils.compile.optimizer_options`."""
        return False

    @property
    def num_inputs(self) -> int:
        """39 (28 per-coordinate + 11 time features), plus 1 with ``distance_feature`` and 6
        with ``tensor_features``."""
        return (NUM_INPUTS + int(self.distance_feature)
                + (NUM_TENSOR_STATISTICS if self.tensor_features else 0))

    @property
    def distance_unit(self) -> float:
        """What ``distance_feature`` measures Prodigy's estimate in: the nominal step size
        (STAR's ``alpha``); the blackbox has none and uses 1e-3, STAR's default."""
        return 1e-3

    def config(self) -> dict:
        """JSON-serializable architecture and switches (stored with saved meta-parameters)."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    # -- LearnedOptimizer protocol -----------------------------------------------------
    def init(self, key: jax.Array) -> dict:
        sizes = (self.num_inputs, *self.hidden_sizes, self.num_outputs)
        mlp = init_mlp(key, sizes)
        last = f"w{len(sizes) - 2}"
        mlp[last] = mlp[last] * self.output_init_scale
        return {"mlp": mlp, "decays": self.accumulators.init_theta()}

    def init_state(self, theta, params) -> LearnedOptState:
        del theta
        return LearnedOptState(
            step=jnp.zeros((), jnp.int32),
            leaves=jax.tree.map(init_leaf_state, params),
            distance=init_distance(params) if self.distance_feature else None,
        )

    def deltas(self, theta, state: LearnedOptState, grads, params):
        """Parameter changes ``new_params - params`` and the new state (the pure core)."""
        decays = self.accumulators.decays(theta["decays"])
        tfeat = time_features(state.step)
        if self.distance_feature:
            tfeat = jnp.concatenate(
                [tfeat, distance_feature(state.distance.d, self.distance_unit)]
            )
        treedef = jax.tree.structure(params)
        p_leaves = treedef.flatten_up_to(params)
        g_leaves = treedef.flatten_up_to(grads)
        s_leaves = treedef.flatten_up_to(state.leaves)
        deltas, new_leaves = [], []
        for p, g, st in zip(p_leaves, g_leaves, s_leaves, strict=True):
            p32 = as_tensor(jnp.asarray(p)).astype(jnp.float32)
            g32 = as_tensor(jnp.asarray(g)).astype(jnp.float32)
            shape, perm = p32.shape, compute_layout(p32.shape)
            if perm is not None:  # a small last dimension: computed with another axis last
                p32, g32 = jnp.transpose(p32, perm), jnp.transpose(g32, perm)
                st = state_to_layout(st, shape)
            st = update_accumulators(st, g32, decays)
            feats = leaf_features(p32, g32, st)
            glob = tfeat
            if self.tensor_features:
                glob = jnp.concatenate([tfeat, tensor_statistics(g32, st, feats.rms)])
            outs = fused_mlp(theta["mlp"], feats.channels, feats.rms, glob, p32.shape)
            delta = self.leaf_delta(outs, p32, g32, st)
            if perm is not None:
                delta = _transpose_back(delta, perm)
                st = state_to_layout(st, shape, back=True)
            deltas.append(delta.reshape(jnp.shape(p)).astype(jnp.asarray(p).dtype))
            new_leaves.append(st)
        distance = state.distance
        if self.distance_feature:
            distance = update_distance(distance, state.step, grads, params)
        new_state = LearnedOptState(
            step=state.step + 1, leaves=jax.tree.unflatten(treedef, new_leaves), distance=distance
        )
        return jax.tree.unflatten(treedef, deltas), new_state

    def leaf_delta(self, outs, p, g, st: LeafState) -> jax.Array:
        raise NotImplementedError

    def blackbox_step(self, outs) -> jax.Array:
        """``s_bb = lambda_s * d * exp(lambda_0 * m)`` from the first two MLP outputs."""
        d, m = outs[0], outs[1]
        return self.step_multiplier * d * jnp.exp(self.magnitude_multiplier * m)

    def update(self, theta, opt_state, grads, params, *, loss=None):
        """One step; ``loss`` is accepted for API symmetry and not used by the features."""
        del loss
        deltas, new_state = self.deltas(theta, opt_state, grads, params)
        return jax.tree.map(jnp.add, params, deltas), new_state

    def as_optax(
        self, theta, *, max_nonfinite_skips: int | None = DEFAULT_MAX_NONFINITE_SKIPS
    ) -> optax.GradientTransformationExtraArgs:
        """This optimizer with fixed ``theta`` as an optax transformation.

        ``update(grads, state, params, **extra)`` needs ``params`` (the features and weight
        decay read them); extra keyword arguments such as ``loss=`` are accepted and ignored.
        No horizon or total step count is needed.

        Non-finite gradients: the step is skipped (zero update, accumulators untouched) and
        counted in ``state.notfinite_count`` (``optax.apply_if_finite``). After
        ``max_nonfinite_skips`` consecutive bad steps the non-finite values are let through, so
        a genuinely diverged run shows up as NaN parameters instead of silently stalling.
        ``max_nonfinite_skips=None`` leaves the guard out: the plain transformation, no
        counter, non-finite gradients go straight into the accumulators. For loops that guard
        elsewhere: the guard's ``lax.cond`` makes XLA copy the optimizer state when the
        caller does not donate it (~0.8 ms of a 7 ms update at 1M parameters on 2 cores).
        """
        max_nonfinite_skips = nonfinite_skips(max_nonfinite_skips)

        def init_fn(params):
            return self.init_state(theta, params)

        def update_fn(updates, state, params=None, **extra):
            del extra
            if params is None:
                raise ValueError(
                    f"lopt {self.name}: update() needs params (weight decay and the parameter "
                    "feature read them): call update(grads, state, params)"
                )
            return self.deltas(theta, state, updates, params)

        inner = optax.GradientTransformationExtraArgs(init_fn, update_fn)
        if max_nonfinite_skips is None:
            return inner
        return optax.apply_if_finite(inner, max_consecutive_errors=max_nonfinite_skips)


def _transpose_back(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    """``x``, computed in the axis order ``perm`` (:func:`~lopt.optimizers.features.
    compute_layout`), in the tensor's own order.

    Through a product with the identity first: XLA's CPU compiler fuses a plain transpose
    into the loop that computes ``x`` and then runs that loop in the tensor's own order, with
    the short last dimension the layout exists to avoid (measured: no gain at all, and an
    ``optimization_barrier`` is removed before fusion). A dot is not fused into, so ``x`` is
    computed in its layout and only the cheap transpose runs in the other. The product is
    exact for finite values (``1 * x`` plus zeros); a non-finite value spreads along its
    last axis, where the tensor's RMS normalizers have in practice already made every
    coordinate non-finite.
    """
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.transpose(jnp.einsum("...j,jk->...k", x, eye), np.argsort(perm))


def json_ready(obj):
    """Tuples to lists, recursively, so a config round-trips through JSON."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj
