"""Parameter initializers that are safe to vmap on a CPU.

Why this module exists: jaxlib 0.10's CPU LAPACK kernels (QR among them) split a *batched*
factorization over XLA's intra-op thread pool and then block until the pieces are done. When
as many batched factorizations as the pool has threads run at once -- an LSTM's four
orthogonally initialized gates under a ``vmap`` over seeds, as in ``lopt evaluate`` -- every
pool thread waits for work queued behind it and the process hangs for good (seen on this
2-core machine within ~100 calls of a vmapped ``text_lstm`` initialization, with or without
``--xla_cpu_multi_thread_eigen=false``; later jaxlib releases compile that parallel path out,
none of them installable here). An unbatched factorization runs in the calling thread.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def one_matrix_at_a_time(init):
    """``init(key, shape, dtype)`` computed for one key at a time under ``vmap``: a batch of
    keys becomes a ``lax.map`` (a loop) over unbatched calls. Values are exactly those of
    ``init`` called key by key; only the batching changes."""

    def wrapped(key, shape, dtype=jnp.float32):
        @custom_vmap
        def one(key):
            return init(key, shape, dtype)

        @one.def_vmap
        def _batched(axis_size, in_batched, key):
            del axis_size
            if not in_batched[0]:
                return one(key), False
            return jax.lax.map(one, key), True

        return one(key)

    return wrapped


def orthogonal(scale: float = 1.0):
    """JAX's (and flax's default recurrent) orthogonal initializer, safe to vmap on a CPU
    (:func:`one_matrix_at_a_time`; same values)."""
    return one_matrix_at_a_time(jax.nn.initializers.orthogonal(scale))
