"""The fused per-coordinate MLP against the textbook one: features stacked into a matrix,
``relu(X @ W + b)`` layer by layer, which JAX differentiates on its own (an independent
oracle for the hand-written derivative of the fused sums)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers.mlp import fused_mlp, init_mlp

SHAPE = (6, 5)


def _problem(sizes=(7, 4, 3, 2)):
    """An MLP with 5 per-coordinate channels (of three broadcast shapes) and 2 global inputs."""
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    mlp = init_mlp(keys[0], sizes)
    mlp = {k: v + 0.1 * jax.random.normal(keys[1], v.shape) for k, v in mlp.items()}  # b != 0
    channels = [
        jax.random.normal(keys[2], SHAPE),
        jax.random.normal(keys[3], SHAPE),
        jax.random.normal(keys[4], (SHAPE[0], 1)),  # factored row statistic
        jax.random.normal(keys[5], (1, SHAPE[1])),  # factored column statistic
        jax.random.normal(keys[6], SHAPE),
    ]
    rms = jnp.array([0.5, 2.0, 1.0, 3.0, 0.7])
    glob = jax.random.normal(keys[7], (2,))
    return mlp, channels, rms, glob


def _textbook_mlp(mlp, channels, rms, glob):
    x = jnp.stack([jnp.broadcast_to(c, SHAPE) / r for c, r in zip(channels, rms, strict=True)], -1)
    x = jnp.concatenate([x, jnp.broadcast_to(glob, SHAPE + glob.shape)], -1)
    layers = len([k for k in mlp if k.startswith("w")])
    for i in range(layers):
        x = jnp.dot(x, mlp[f"w{i}"], precision=jax.lax.Precision.HIGHEST) + mlp[f"b{i}"]
        if i < layers - 1:
            x = jax.nn.relu(x)
    return jnp.moveaxis(x, -1, 0)


def _fused(mlp, channels, rms, glob):
    return jnp.stack(fused_mlp(mlp, channels, rms, glob, SHAPE))


def test_outputs_match_the_textbook_mlp():
    args = _problem()
    np.testing.assert_allclose(_fused(*args), _textbook_mlp(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_derivatives_match_the_textbook_mlp(mode):
    """Every input: weights, biases, the channels (of every broadcast shape), their RMS
    normalizers and the global inputs; reverse mode (meta-gradients) and forward mode (the
    stability analysis' jacfwd)."""
    args = _problem()
    direction = jax.random.normal(jax.random.PRNGKey(9), (2,) + SHAPE)

    def loss(f):
        return lambda *a: jnp.sum(f(*a) * direction)

    argnums = (0, 1, 2, 3)
    if mode == "reverse":
        ours = jax.jit(jax.grad(loss(_fused), argnums))(*args)
        oracle = jax.grad(loss(_textbook_mlp), argnums)(*args)
    else:
        ours = jax.jit(jax.jacfwd(_fused, argnums))(*args)
        oracle = jax.jacfwd(_textbook_mlp, argnums)(*args)
    leaves, oracle_leaves = jax.tree.leaves(ours), jax.tree.leaves(oracle)
    assert len(leaves) == len(oracle_leaves) == 6 + 5 + 1 + 1  # mlp, channels, rms, glob
    for a, b in zip(leaves, oracle_leaves, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_meta_gradient_compiles_as_products():
    """The derivative of the fused sums is a few tensor products, not one reduction per
    weight (which made XLA's compile of a meta-gradient take minutes)."""
    args = _problem((7, 16, 16, 2))
    text = jax.jit(jax.grad(lambda *a: jnp.sum(_fused(*a)), (0,))).lower(*args).as_text()
    num_weights = 7 * 16 + 16 * 16 + 16 * 2
    assert text.count("stablehlo.reduce") < num_weights // 10
