"""Initializers safe to vmap on a CPU: same values as JAX's own, no batched LAPACK call.

A batched QR under vmap hung jaxlib 0.10's CPU runtime for good (``lopt evaluate`` on
``text_lstm``, two seeds at once); see :mod:`lopt.tasks.initializers`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.tasks import get
from lopt.tasks.initializers import orthogonal


def test_orthogonal_equals_jax_initializer_key_by_key_and_under_nested_vmap():
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    reference = jax.nn.initializers.orthogonal(0.5)  # the oracle: JAX's own
    ours = orthogonal(0.5)
    expected = np.stack([np.asarray(reference(k, (8, 5), jnp.float32)) for k in keys])
    one_by_one = np.stack([np.asarray(jax.jit(lambda k: ours(k, (8, 5)))(k)) for k in keys])
    nested = jax.jit(jax.vmap(jax.vmap(lambda k: ours(k, (8, 5)))))(keys.reshape(2, 3, 2))
    np.testing.assert_array_equal(one_by_one, expected)
    np.testing.assert_array_equal(np.asarray(nested).reshape(expected.shape), expected)
    gram = expected[0].T @ expected[0]  # orthogonal columns, scaled by 0.5
    np.testing.assert_allclose(gram, 0.25 * np.eye(5), atol=1e-5)


def lapack_result_shapes(hlo: str) -> list[str]:
    return re.findall(r"= \(?(\w+\[[\d,]*\])[^\n]*custom_call_target=\"lapack_", hlo)


def test_vmapped_lstm_initialization_makes_no_batched_lapack_call():
    task = get("text_lstm")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    hlo = jax.jit(jax.vmap(task.init)).lower(keys).compile().as_text()
    shapes = lapack_result_shapes(hlo)
    assert shapes, "expected the orthogonal initializer's QR in the program"
    batched = [s for s in shapes if s.count(",") >= 2]  # rank >= 3: a batch of matrices
    assert not batched, batched


@pytest.mark.slow
def test_vmapped_lstm_initialization_does_not_hang():
    """The symptom itself: before the fix this loop hung within ~100 calls on 2 cores."""
    code = textwrap.dedent(
        """
        import jax
        from lopt.tasks import get
        init = jax.jit(jax.vmap(get("text_lstm").init))
        for i in range(400):
            jax.block_until_ready(init(jax.random.split(jax.random.PRNGKey(i), 6)))
        print("finished")
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("400 vmapped text_lstm initializations did not finish in 240 s (hang)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished" in out.stdout
