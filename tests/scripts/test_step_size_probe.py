"""scripts/step_size_probe.py reads the learned step size the update really uses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest
from script_module import load_script

from lopt.evaluate.suites import build_task
from lopt.optimizers import STAR

step_size_probe = load_script("step_size_probe")


def test_probe_reports_the_closed_form_step_size_of_a_constant_controller():
    """Last MLP layer zero and the controller's bias beta: every tensor's c is beta at every
    step, so k = exp(R tanh(lambda beta / R)) (by hand), whatever the task does."""
    opt = STAR(step_size_controller=True, step_size_multiplier=10.0)
    theta = opt.init(jax.random.PRNGKey(0))
    last = max(k for k in theta["mlp"] if k.startswith("w"))
    bias = "b" + last[1:]
    beta = 0.07
    mlp = dict(theta["mlp"])
    mlp[last] = jnp.zeros_like(mlp[last])
    mlp[bias] = jnp.zeros_like(mlp[bias]).at[-1].set(beta)
    theta = {**theta, "mlp": mlp}
    row = step_size_probe.probe(build_task("digits_mlp"), theta, opt, steps=12, seed=0)
    r = opt.step_size_range
    expected = math.exp(r * math.tanh(opt.step_size_multiplier * beta / r))
    assert row["tensors"] == 4  # two kernels, two biases
    for stat in ("k_geomean", "k_min", "k_max"):
        assert set(row[stat]) == {1, 6, 10, 12}
        for value in row[stat].values():
            assert value == pytest.approx(expected, rel=1e-3)
    assert math.isfinite(row["final_loss"])


def test_probe_refuses_weights_without_a_learned_step_size():
    opt = STAR(step_size_controller=False)
    with pytest.raises(SystemExit, match="no learned step size"):
        step_size_probe.probe(build_task("digits_mlp"), opt.init(jax.random.PRNGKey(0)), opt,
                              steps=2, seed=0)
