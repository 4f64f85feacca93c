"""Which optimizer config keys the torch front-end implements, and which may differ per group.

The torch optimizers read the very same architecture config as the JAX ones
(``optimizer.config()``, stored in every meta-parameter file). Every key of that config must be
listed here, in one of two roles:

* **architecture**: fixed by the meta-parameters (their shapes, or what they mean); the same
  for every parameter group and taken from the weights file when one is loaded;
* **group switch**: a plain number/choice that changes how MLP outputs become the step; a torch
  parameter group may override it (e.g. ``weight_decay=0`` for biases and norms).

A key that is in neither set (a switch added to the JAX optimizer but not yet to
:mod:`lopt.torch.steps`) makes the torch front-end refuse the config instead of silently
computing a different update. Adding a switch = one entry here + one branch in ``steps.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

ARCHITECTURE = {
    "star": frozenset(
        {
            "hidden_sizes",
            "accumulators",
            "output_init_scale",
            "nominal_controller",
            "regularization_controller",
            "step_size_controller",
            "tensor_features",
            "distance_feature",
        }
    ),
    "blackbox": frozenset(
        {"hidden_sizes", "accumulators", "output_init_scale", "tensor_features",
         "distance_feature"}
    ),
}

GROUP_SWITCHES = {
    "star": (
        "step_multiplier",
        "magnitude_multiplier",
        "nominal",
        "alpha",
        "precondition",
        "precondition_mode",
        "precondition_epsilon",
        "weight_decay",
        "decay_mode",
        "nominal_controller_multiplier",
        "nominal_controller_aggregation",
        "regularization_controller_multiplier",
        "regularization_controller_aggregation",
        "step_size_multiplier",
        "step_size_range",
        "step_size_aggregation",
        "step_scale",
    ),
    "blackbox": ("step_multiplier", "magnitude_multiplier"),
}

#: JAX switches the torch front-end does not implement yet, accepted only at their "off" value
#: (every config carries them, so refusing the key outright would refuse every config).
OFF_ONLY: dict[str, dict] = {"star": {}, "blackbox": {}}

#: fields of the accumulator config (nested under ``accumulators``).
ACCUMULATOR_KEYS = frozenset({"momentum_decays", "rms_decay", "factored_decays"})

#: keys torch itself (or users, by convention) put in a parameter group.
TORCH_GROUP_KEYS = frozenset({"params", "param_names", "name"})


class UnsupportedConfigError(NotImplementedError):
    """The optimizer config has a key the torch front-end does not implement."""


def check_supported(kind: str, config: Mapping) -> None:
    """Raise :class:`UnsupportedConfigError` for any config key this front-end does not know."""
    if kind not in ARCHITECTURE:
        raise UnsupportedConfigError(
            f"lopt.torch has no front-end for optimizer kind {kind!r} "
            f"(known: {sorted(ARCHITECTURE)})"
        )
    off_only = OFF_ONLY[kind]
    known = ARCHITECTURE[kind] | set(GROUP_SWITCHES[kind]) | set(off_only)
    unknown = sorted(set(config) - known)
    unknown += [
        f"{k}={config[k]!r}" for k in sorted(off_only) if k in config and config[k] != off_only[k]
    ]
    acc = config.get("accumulators", {})
    acc = acc if isinstance(acc, Mapping) else vars(acc)
    unknown += [f"accumulators.{k}" for k in sorted(set(acc) - ACCUMULATOR_KEYS)]
    if unknown:
        raise UnsupportedConfigError(
            f"lopt.torch does not implement the {kind} config key(s) {unknown}: the torch "
            "update would differ from the JAX one. Add them to lopt/torch/switches.py and "
            "lopt/torch/steps.py (and a case to the parity test)."
        )


def check_group_keys(kind: str, group: Mapping) -> None:
    """A parameter group may hold torch's own keys and this kind's group switches, nothing else."""
    switches = set(GROUP_SWITCHES[kind])
    for key in group:
        if key in TORCH_GROUP_KEYS or key in switches:
            continue
        if key in ARCHITECTURE[kind]:
            raise ValueError(
                f"parameter group sets {key!r}, which is part of the {kind} architecture (it "
                "changes what the meta-parameters mean) and cannot differ per group; pass it "
                "to the optimizer instead"
            )
        raise ValueError(
            f"parameter group has unknown key {key!r}; a {kind} group may set {sorted(switches)}"
        )


def group_defaults(kind: str, config: Mapping) -> dict:
    """The torch ``defaults`` dict: every group switch at the optimizer's value."""
    return {k: config[k] for k in GROUP_SWITCHES[kind]}
