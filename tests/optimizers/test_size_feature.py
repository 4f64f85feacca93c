"""``size_feature``: a tensor's number of elements as one more MLP input.

Oracles: the formula by hand, and the MLP's own algebra -- an input that is the same for every
coordinate of a tensor is a shift of the first layer's bias, so the update with the switch on
must equal the update with it off and that shift folded into the bias by hand. The end-to-end
comparison with the NumPy reference is in ``test_update_vs_reference.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers import STAR, Blackbox
from lopt.optimizers.features import NUM_INPUTS, size_feature


@pytest.mark.parametrize(
    ("shape", "want"),
    [
        ((64, 32), 0.0),  # the reference size
        ((256, 256), np.log(32.0) / 4),  # 65536 = 32 * 2048
        ((32, 2, 32), 0.0),  # the number of elements, whatever the layout
        ((32, 10), np.log(320 / 2048) / 4),
        ((), -np.log(2048.0) / 4),  # a scalar is one element
        ((0, 3), -np.log(2048.0) / 4),  # an empty tensor too (no log of 0)
    ],
)
def test_size_feature_by_hand(shape, want):
    np.testing.assert_allclose(size_feature(shape), [want], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [STAR, Blackbox])
def test_switch_adds_one_input_after_the_distance_feature(cls):
    assert cls(size_feature=True).num_inputs == NUM_INPUTS + 1
    both = cls(size_feature=True, distance_feature=True, tensor_features=True)
    assert both.num_inputs == NUM_INPUTS + 8
    assert both.init(jax.random.PRNGKey(0))["mlp"]["w0"].shape[0] == both.num_inputs
    assert both.config()["size_feature"] is True
    assert type(both).from_config(both.config()) == both


def _with_input_row(theta_off: dict, row: jax.Array, at: int) -> dict:
    mlp = dict(theta_off["mlp"])
    mlp["w0"] = jnp.insert(mlp["w0"], at, row, axis=0)
    return {**theta_off, "mlp": mlp}


@pytest.mark.parametrize("distance", [False, True], ids=["alone", "after-distance"])
def test_the_input_is_a_bias_shift_of_the_tensors_size(distance):
    """On: first-layer weights ``r`` on the size input. Off, with ``b0 + size(shape) r`` as the
    bias for each tensor: the same steps, tensor by tensor."""
    kw = dict(step_size_controller=True, distance_feature=distance, output_init_scale=1.0,
              step_multiplier=1e-3)
    off, on = STAR(**kw), STAR(size_feature=True, **kw)
    theta_off = off.init(jax.random.PRNGKey(3))
    row = jnp.array([0.9, -1.3, 0.4, 1.7])
    at = NUM_INPUTS + int(distance)  # after the time features and the distance estimate
    theta_on = _with_input_row(theta_off, row, at)
    params = {"big": jnp.linspace(-1.0, 1.0, 40 * 64).reshape(40, 64),
              "small": jnp.linspace(0.5, -0.5, 6)}
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(3.0 * p) + 0.01, params)
    got, _ = on.deltas(theta_on, on.init_state(theta_on, params), grads, params)
    for name, p in params.items():
        shifted = jax.tree.map(lambda x: x, theta_off)
        shifted["mlp"]["b0"] = theta_off["mlp"]["b0"] + size_feature(p.shape)[0] * row
        want, _ = off.deltas(shifted, off.init_state(shifted, params), grads, params)
        np.testing.assert_allclose(got[name], want[name], rtol=2e-6, atol=1e-9, err_msg=name)
    # and the input matters: the two tensors' shifts differ, so ignoring it changes the steps
    plain, _ = off.deltas(theta_off, off.init_state(theta_off, params), grads, params)
    for name in params:
        assert not np.allclose(got[name], plain[name], rtol=1e-3), name
