"""``lopt.torch.STAR`` and ``lopt.torch.Blackbox``: ``torch.optim.Optimizer`` front-ends.

They compute the same update as the JAX optimizers (``STAR.update`` / ``STAR.as_optax``), from
the same meta-parameter files and config, one parameter tensor at a time with vectorized torch
ops. Differences from the JAX front-end are those of the torch contract:

* parameters without a gradient are skipped (no state, no step), so each parameter keeps its
  own step counter (it drives the time features); when every parameter has a gradient at
  every step this is the JAX optimizer's single step counter;
* parameter groups may override the per-group switches of :mod:`lopt.torch.switches`;
* non-finite gradients: as ``optax.apply_if_finite`` in the optax front-end, checked over all
  gradients of the step: the step is skipped (parameters and accumulators untouched) and
  counted; after ``max_nonfinite_skips`` consecutive bad steps the values are let through, so a
  diverged run shows up as NaN parameters instead of silently stalling;
  ``max_nonfinite_skips=None`` turns the guard off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lopt.optimizers.learned import DEFAULT_MAX_NONFINITE_SKIPS, nonfinite_skips
from lopt.torch import distance
from lopt.torch.features import (
    as_tensor_shape,
    init_leaf_state,
    leaf_features,
    tensor_statistics,
    time_features,
    update_accumulators,
)
from lopt.torch.meta import (
    build_config,
    device_meta,
    resolve_meta_params,
    theta_from_torch,
    theta_to_torch,
)
from lopt.torch.mlp import mlp_outputs
from lopt.torch.steps import LEAF_DELTA
from lopt.torch.switches import GROUP_SWITCHES, check_group_keys, group_defaults
from lopt.torch.workspace import Workspace

STATE_KEYS = ("step", "m", "v", "row", "col")


class LearnedOptimizer(torch.optim.Optimizer):
    """Shared machinery; subclasses set ``kind`` (``"star"`` or ``"blackbox"``)."""

    kind: str = ""

    def __init__(
        self,
        params,
        theta=None,
        *,
        max_nonfinite_skips: int | None = DEFAULT_MAX_NONFINITE_SKIPS,
        **switches,
    ):
        skips = nonfinite_skips(max_nonfinite_skips)  # checked before any file is read
        theta_j, opt = resolve_meta_params(self.kind, theta, switches)
        self._set_meta(theta_j, opt)
        self.max_nonfinite_skips = skips
        self.notfinite_count = 0  # consecutive non-finite steps
        self.total_notfinite = 0
        self.last_finite = True
        super().__init__(params, group_defaults(self.kind, opt.config()))

    # -- meta-parameters -----------------------------------------------------------------
    def _set_meta(self, theta_j, opt) -> None:
        self.optimizer_config = opt  # the JAX config dataclass (architecture + default switches)
        self._theta_jax = theta_j
        self._device_meta: dict = {}
        self._group_configs: dict = {}
        self._workspace = Workspace()
        # Prodigy's global distance estimate (``distance_feature``), None when the switch is off
        self.distance = distance.init_global() if opt.distance_feature else None

    @property
    def theta(self) -> dict[str, torch.Tensor]:
        """The meta-parameters, ``{"mlp/w0": tensor, ...}`` (the safetensors layout)."""
        return theta_to_torch(self._theta_jax)

    def _meta_on(self, device):
        meta = self._device_meta.get(device)
        if meta is None:
            meta = device_meta(self.optimizer_config, self._theta_jax, device)
            self._device_meta[device] = meta
        return meta

    def _config_of(self, group: dict):
        """The JAX config dataclass with this group's switches (validated, cached)."""
        switches = {k: group[k] for k in GROUP_SWITCHES[self.kind]}
        key = tuple(switches.values())
        cfg = self._group_configs.get(key)
        if cfg is None:
            cfg = build_config(self.kind, {**self.optimizer_config.config(), **switches})
            self._group_configs[key] = cfg
        return cfg

    def add_param_group(self, param_group: dict) -> None:
        check_group_keys(self.kind, param_group)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.is_complex():
                raise TypeError(f"lopt.torch.{type(self).__name__} does not support complex "
                                "parameters")
        self._config_of(group)  # bad switch values fail here, not at the first step

    # -- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group in self.param_groups:
            cfg = self._config_of(group)
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"lopt.torch.{type(self).__name__} does not support sparse gradients "
                        "(its features need every coordinate's gradient and whole-tensor "
                        "statistics); use a dense layer, e.g. nn.Embedding(sparse=False)"
                    )
                work.append((p, cfg))
        if work and self._admit([p.grad for p, _ in work]):
            if self.distance is None:
                for p, cfg in work:
                    self._update_param(p, cfg)
            else:
                self._distance_step(work)
        return loss

    def _distance_step(self, work) -> None:
        """Every parameter updated with the estimate of the steps before as the MLP input; the
        estimate takes this step's gradients at the parameters they were taken at (so first)."""
        before = self.distance["d"]
        items = []
        for p, _ in work:
            p32, g32 = _float32_views(p)
            st = self.state[p]
            if "params0" not in st:
                st.update(distance.init_param_state(p32))
            items.append((p32, g32, st))
        self.distance = distance.update(self.distance, items)
        # the float32 copies made above are the update's inputs too (one conversion per step
        # for bf16/fp16 parameters, not two)
        for (p, cfg), (p32, g32, _) in zip(work, items, strict=True):
            feature = distance.feature(before, cfg.distance_unit, p.device)
            self._update_param(p, cfg, feature, (p32, g32))

    def _admit(self, grads) -> bool:
        """optax.apply_if_finite's rule: count non-finite steps, apply if finite or past the
        limit of consecutive skips. ``max_nonfinite_skips=None``: no guard, always apply."""
        if self.max_nonfinite_skips is None:
            return True
        # min and max propagate NaN and show +-inf: one pass, no boolean copy of each gradient
        by_device: dict = {}
        for g in grads:
            by_device.setdefault(g.device, []).extend(torch.aminmax(g))
        finite = all(bool(torch.isfinite(torch.stack(v)).all()) for v in by_device.values())
        self.last_finite = finite
        if finite:
            self.notfinite_count = 0
        else:
            self.notfinite_count += 1
            self.total_notfinite += 1
        return finite or self.notfinite_count > self.max_nonfinite_skips

    def _update_param(self, p: torch.Tensor, cfg, distance_input=None, inputs=None) -> None:
        """One parameter's update; ``inputs``: its :func:`_float32_views` when already made."""
        shape = as_tensor_shape(p.shape)
        st = self.state[p]
        if "step" not in st:
            st.update(init_leaf_state(shape, p.device))
        meta = self._meta_on(p.device)
        ws = self._workspace
        ws.reset(p.device)
        p32, g32 = inputs if inputs is not None else _float32_views(p)
        update_accumulators(st, g32, meta.decays, ws)
        feats = leaf_features(p32, g32, st, ws)
        tfeat = time_features(st["step"], meta.scales)
        if distance_input is not None:
            tfeat = torch.cat([tfeat, distance_input])
        if self.optimizer_config.tensor_features:
            tfeat = torch.cat([tfeat, tensor_statistics(g32, st, feats.rms)])
        outs = mlp_outputs(meta.layers, feats, tfeat, shape, ws)
        delta = LEAF_DELTA[self.kind](cfg, outs, p32, g32, st, feats.rsqrt_v)
        p.add_(delta.view(p.shape).to(p.dtype))
        st["step"] += 1

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's state dict plus ``"lopt"``: kind, architecture config, meta-parameters and the
        non-finite counters, so a resumed optimizer continues exactly."""
        sd = super().state_dict()
        sd["lopt"] = {
            "kind": self.kind,
            "config": self.optimizer_config.config(),
            "theta": self.theta,
            "max_nonfinite_skips": self.max_nonfinite_skips,
            "notfinite_count": self.notfinite_count,
            "total_notfinite": self.total_notfinite,
            "last_finite": self.last_finite,
            "distance": None if self.distance is None else dict(self.distance),
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`. Accumulators stay float32 on each parameter's device
        (torch's default would cast them to the parameter's dtype)."""
        extra = state_dict.get("lopt")
        if extra is None or extra.get("kind") != self.kind:
            found = None if extra is None else extra.get("kind")
            raise ValueError(
                f"not a lopt.torch.{type(self).__name__} state dict (lopt kind {found!r})"
            )
        opt = build_config(self.kind, extra["config"])
        theta_j = theta_from_torch(opt, extra["theta"])
        saved_state = state_dict["state"]
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        self._set_meta(theta_j, opt)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        keys = STATE_KEYS + (distance.STATE_KEYS if opt.distance_feature else ())
        for i, p in zip(saved_ids, params, strict=True):
            if i not in saved_state:
                continue
            st = saved_state[i]
            missing = [k for k in keys if k not in st]
            if missing:
                raise ValueError(f"state of parameter {i} lacks {missing}")
            expected = init_leaf_state(as_tensor_shape(p.shape), "cpu")
            if opt.distance_feature:
                expected.update(distance.init_param_state(expected["v"]))
            for k in keys:
                if tuple(st[k].shape) != tuple(expected[k].shape):
                    raise ValueError(
                        f"state {k!r} of parameter {i} has shape {tuple(st[k].shape)}, the "
                        f"parameter of shape {tuple(p.shape)} needs {tuple(expected[k].shape)}"
                    )
            self.state[p] = {
                k: st[k].detach().to(device=p.device, dtype=expected[k].dtype, copy=True)
                for k in keys
            }
        if opt.distance_feature:
            saved = extra.get("distance")
            if saved is None:
                raise ValueError("state dict of a distance_feature optimizer lacks 'distance'")
            self.distance = {"d": float(saved["d"]), "numerator": float(saved["numerator"]),
                             "step": int(saved["step"])}
        self.max_nonfinite_skips = nonfinite_skips(extra["max_nonfinite_skips"])
        self.notfinite_count = int(extra["notfinite_count"])
        self.total_notfinite = int(extra["total_notfinite"])
        self.last_finite = bool(extra["last_finite"])

    def __getstate__(self):
        """pickle / ``copy.deepcopy`` keep the meta-parameters and the counters (torch's own
        ``__getstate__`` keeps only defaults, state and param_groups)."""
        own = ("optimizer_config", "_theta_jax", "max_nonfinite_skips", "notfinite_count",
               "total_notfinite", "last_finite", "distance")
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in own}}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._device_meta, self._group_configs, self._workspace = {}, {}, Workspace()

    def __repr__(self) -> str:
        return f"lopt.torch.{type(self).__name__}({self.optimizer_config!r})"


class STAR(LearnedOptimizer):
    """STAR (nominal term + preconditioned learned term + weight decay) for torch.

    ``STAR(params, theta=None, **switches)``: ``theta`` is None (shipped weights, or
    meta-initialization: Adam-AggMo with step 1e-3 plus a tiny learned term), a path to a
    meta-parameter file written by :func:`lopt.save_meta_params`, or a theta pytree. Switches
    are the fields of :class:`lopt.optimizers.STAR` (``weight_decay``, ``alpha``, ``nominal``,
    ...); parameter groups may override the per-group ones, e.g.
    ``[{"params": weights}, {"params": biases, "weight_decay": 0.0}]``.
    """

    kind = "star"


class Blackbox(LearnedOptimizer):
    """The blackbox Adafactor-MLP learned optimizer for torch (see :class:`STAR`)."""

    kind = "blackbox"


def _float32_views(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The parameter and its gradient as float32 in the computed shape (views for float32
    parameters, copies otherwise)."""
    shape = as_tensor_shape(p.shape)
    return (p.detach().to(torch.float32).reshape(shape),
            p.grad.detach().to(torch.float32).reshape(shape))
