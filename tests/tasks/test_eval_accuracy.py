"""Classification tasks report held-out accuracy, and the training loop records it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers.hand_designed import hand_designed_tx
from lopt.tasks.classify import DeviceDataset, classifier_task
from lopt.tasks.mlp import MLP
from lopt.training.loop import seed_keys, stack_variants, train_curves


def _separable(n, key):
    """Two classes split by the sign of the first coordinate, with a margin."""
    x = jax.random.normal(key, (n, 2))
    x = x.at[:, 0].add(jnp.where(x[:, 0] > 0, 1.0, -1.0))
    return x, (x[:, 0] > 0).astype(jnp.int32)


def _task():
    x, y = _separable(64, jax.random.PRNGKey(0))
    xt, yt = _separable(40, jax.random.PRNGKey(1))
    data = DeviceDataset("toy", x, y, xt, yt, num_classes=2)
    return classifier_task("toy_linear", MLP((), 2), data, batch_size=16, act_index=0), xt, yt


def test_loop_records_accuracy_matching_an_independent_count():
    task, xt, yt = _task()
    seen = []
    curves = train_curves(
        task, hand_designed_tx("sgd"), stack_variants([{"learning_rate": jnp.float32(0.5)}]),
        [3], 200, eval_every=100, on_eval=lambda done, row: seen.append((done, row)),
    )
    assert curves.eval_steps == [0, 100, 200]
    acc = curves.eval_accuracies[0, 0]
    # step 0: the initial linear model, evaluated here by hand with numpy
    p = task.init(seed_keys(3)[1])["params"]["Dense_0"]
    logits = np.asarray(xt) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    assert acc[0] == pytest.approx(np.mean(np.argmax(logits, axis=1) == np.asarray(yt)), rel=1e-6)
    assert acc[-1] == 1.0  # separable with a margin: SGD on the cross-entropy gets them all
    assert [d for d, _ in seen] == [0, 100, 200]
    np.testing.assert_array_equal([r["eval_accuracy"][0, 0] for _, r in seen], acc)


def test_tasks_without_accuracy_record_none():
    from lopt.tasks import get

    curves = train_curves(get("quadratic"), hand_designed_tx("sgd"),
                          stack_variants([{"learning_rate": jnp.float32(0.1)}]), [0], 10)
    assert curves.eval_accuracies is None
