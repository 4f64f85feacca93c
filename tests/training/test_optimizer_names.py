"""Optimizer names on the command line: ``NAME_OR_PATH:step_scale=S`` for a STAR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.optimizers import STAR
from lopt.training.optimizers import OptimizerSpecError, resolve


def first_update(spec):
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.sin(2.0 * p) + 0.1, params)
    tx = spec.make_tx(spec.theta)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_step_scale_suffix_scales_the_shipped_star_and_names_it():
    plain, scaled = resolve("star"), resolve("star:step_scale=0.5")
    assert scaled.label == "star:step_scale=0.5"
    assert scaled.config == {**plain.config, "step_scale": 0.5}
    assert scaled.weights == plain.weights
    assert scaled.identity() != plain.identity()  # an evaluation caches them apart
    up, us = first_update(plain), first_update(scaled)
    for name in up:
        assert float(jnp.abs(up[name]).max()) > 0
        np.testing.assert_allclose(us[name], 0.5 * np.asarray(up[name]), rtol=1e-6)


def test_step_scale_suffix_on_a_saved_star(tmp_path):
    opt = STAR(alpha=0.02, weight_decay=0.0)
    theta = opt.init(jax.random.PRNGKey(0))
    path = lopt.save_meta_params(tmp_path / "mine.safetensors", theta, opt)
    spec = resolve(f"{path}:step_scale=3")
    assert spec.label == "mine:step_scale=3"
    assert spec.kind == "path" and spec.config["alpha"] == 0.02
    assert spec.config["step_scale"] == 3.0


@pytest.mark.parametrize(
    "name,match",
    [
        ("star:step_scale=fast", "must be a number"),
        ("star:step_scale=0", "> 0"),
        ("star:step_scale=-2", "> 0"),
        ("star:step_scale=nan", "> 0"),
        ("star:step_scale=0.5:step_scale=2", "more than once"),
        ("adam:step_scale=0.5", "not a STAR"),
        ("blackbox:step_scale=0.5", "not a STAR"),
        ("nope:step_scale=0.5", "unknown optimizer 'nope'"),
    ],
)
def test_bad_step_scale_suffixes_are_refused_clearly(name, match):
    with pytest.raises(OptimizerSpecError, match=match):
        resolve(name)
