"""A torch MLP on the digits trains with lopt.torch.STAR exactly as the JAX version does.

Same data (scikit-learn digits via lopt's loader), same initial weights, same batches; the
model is an ordinary ``nn.Sequential`` of ``nn.Linear`` (weights stored ``(out, in)``, the
transpose of the JAX kernels: the factored statistics are transpose-equivariant for non-square
matrices, so the two runs compute the same update). Gradients differ only by float rounding
between the two frameworks' forward/backward passes.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
# One intra-op thread: the suite already runs a process per core, and torch's pool on a busy
# 2-core machine made small ops ~30x slower (100 digits steps: 12 s with 2 threads, 0.37 s).
torch.set_num_threads(1)

import lopt  # noqa: E402
import lopt.torch  # noqa: E402
from lopt.tasks.data import load_digits  # noqa: E402

STEPS, BATCH, SIZES = 300, 64, (64, 32, 10)


def data_and_batches(seed=0):
    ds = load_digits()
    x = ds.x_train.reshape(len(ds.x_train), -1).astype(np.float32)
    y = ds.y_train.astype(np.int64)
    rng = np.random.default_rng(seed)
    batches = [rng.integers(0, len(y), BATCH) for _ in range(STEPS)]
    return x, y, batches


def init_weights(seed=0):
    """``[(kernel (in, out), bias)]``, He-scaled normal kernels, small random biases."""
    rng = np.random.default_rng(seed)
    return [
        ((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
         (0.1 * rng.standard_normal(b)).astype(np.float32))
        for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)
    ]


def jax_run(weights, x, y, batches):
    def loss_fn(params, xb, yb):
        h = xb
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()

    tx = lopt.star()

    @jax.jit
    def step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    state = tx.init(params)
    losses = []
    for idx in batches:
        params, state, loss = step(params, state, x[idx], y[idx])
        losses.append(float(loss))
    return np.array(losses), float(loss_fn(params, x, y))


def torch_model(weights):
    layers = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w.T))
            lin.bias.copy_(torch.tensor(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_steps(model, opt, x, y, batches):
    losses = []
    for idx in batches:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.tensor(x[idx])), torch.tensor(y[idx]))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def full_loss(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y)).item()


def test_torch_mlp_trains_like_jax_and_resumes_exactly():
    x, y, batches = data_and_batches()
    weights = init_weights()
    jax_losses, jax_final = jax_run(weights, x, y, batches)

    model = torch_model(weights)
    opt = lopt.torch.STAR(model.parameters())
    torch_losses = np.array(torch_steps(model, opt, x, y, batches))
    torch_final = full_loss(model, x, y)

    # It trains (chance is ln 10 = 2.30), and to the JAX run's loss, batch by batch.
    assert torch_final < 0.6 * torch_losses[:10].mean()
    np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(torch_final, jax_final, rtol=1e-4)

    # Resume: stop half-way, save model + optimizer, rebuild both from the file, continue.
    half = STEPS // 2
    model_a = torch_model(weights)
    opt_a = lopt.torch.STAR(model_a.parameters())
    torch_steps(model_a, opt_a, x, y, batches[:half])
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model_b = torch_model(init_weights(seed=1))  # different weights: the file must set them
    model_b.load_state_dict(saved["model"])
    opt_b = lopt.torch.STAR(model_b.parameters())
    opt_b.load_state_dict(saved["opt"])
    resumed_losses = torch_steps(model_b, opt_b, x, y, batches[half:])
    np.testing.assert_array_equal(resumed_losses, torch_losses[half:])
    for a, b in zip(model.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
