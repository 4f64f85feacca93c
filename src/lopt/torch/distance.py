"""Prodigy's distance estimate for the torch front-end (``distance_feature=True``).

The same numbers as :mod:`lopt.optimizers.distance` (its docstring has the formulas): one
global estimate ``d`` over every parameter updated in a step, the MLP reading
``log(d / unit) / 5``. The estimate and its step counter live in the optimizer (not per
parameter); each parameter keeps ``grad_sum`` and ``params0`` in its state. A parameter without a
gradient in a step adds nothing to that step's sums and its ``grad_sum`` is not decayed; when
every parameter has a gradient at every step this is the JAX optimizer exactly. The input is
measured in each parameter group's ``alpha`` (a group that overrides ``alpha`` reads the same
estimate in its own unit, as a separate JAX optimizer with that ``alpha`` would).
"""

from __future__ import annotations

import math

import torch

from lopt.optimizers.distance import BETA1, BETA2, BETA3, D0, FEATURE_SCALE

STATE_KEYS = ("grad_sum", "params0")


def init_param_state(p32: torch.Tensor) -> dict:
    return {"grad_sum": torch.zeros_like(p32), "params0": p32.clone()}


def init_global() -> dict:
    """``d``, the weighted numerator and the number of steps the estimate has seen."""
    return {"d": D0, "numerator": 0.0, "step": 0}


def feature(d: float, unit: float, device) -> torch.Tensor:
    """The MLP input ``log(d / unit) / 5`` (float32, shape ``(1,)``)."""
    d32 = torch.tensor([d], dtype=torch.float32, device=device)
    return torch.log(d32 / unit) / FEATURE_SCALE


def update(glob: dict, items) -> dict:
    """The estimate after one step; ``items``: ``(p32, g32, state)`` of every parameter updated,
    ``p32`` the parameters the gradient was taken at. Updates each ``state["grad_sum"]``.

    The two sums are accumulated on each parameter's device and brought to the host once per
    device (the ``max`` with the running estimate needs the value on the host)."""
    t = glob["step"] + 1
    d = torch.tensor(glob["d"], dtype=torch.float32)
    weight = d * d * torch.tensor(math.sqrt(1 - BETA2**t) / (1 - BETA1**t), dtype=torch.float32)
    parts: dict = {}  # device -> ([<g, x0 - x>], [sum |s|])
    for p32, g32, st in items:
        moved, total = parts.setdefault(g32.device, ([], []))
        moved.append(torch.sum(g32 * (st["params0"] - p32)))
        st["grad_sum"].mul_(BETA3).add_(weight.to(g32.device) * g32)
        total.append(st["grad_sum"].abs().sum())
    moved = sum(torch.stack(m).sum().cpu() for m, _ in parts.values())
    total = sum(torch.stack(s).sum().cpu() for _, s in parts.values())
    numerator = BETA3 * torch.tensor(glob["numerator"], dtype=torch.float32) + weight * moved
    ratio = float(numerator / total) if float(total) > 0 else 0.0
    return {"d": max(glob["d"], ratio), "numerator": float(numerator), "step": t}
