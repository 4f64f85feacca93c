"""lopt's compile helpers: concurrent compilation returns the right programs, in order."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.utils.compile import compile_concurrently


def test_compile_concurrently_returns_each_program_in_order():
    x = jnp.arange(6.0)
    fns = [lambda v: v * 2.0, lambda v: jnp.sin(v) + 1.0, lambda v: jnp.cumsum(v)]
    compiled = compile_concurrently([jax.jit(f).lower(x) for f in fns])
    for f, c in zip(fns, compiled, strict=True):
        np.testing.assert_array_equal(np.asarray(c(x)), np.asarray(f(x)))


def test_compile_concurrently_uses_other_threads_and_reraises_their_errors(monkeypatch):
    monkeypatch.delenv("LOPT_COMPILE_SERIAL", raising=False)
    seen = []

    class Fake:
        def __init__(self, value, fail=False):
            self.value, self.fail = value, fail

        def compile(self):
            seen.append(threading.current_thread().name)
            if self.fail:
                raise RuntimeError(f"compile {self.value} failed")
            return self.value

    assert compile_concurrently([Fake(1), Fake(2), Fake(3)]) == [1, 2, 3]
    assert len(set(seen)) == 3  # the caller's thread plus one per further program
    with pytest.raises(RuntimeError, match="compile 2 failed"):
        compile_concurrently([Fake(1), Fake(2, fail=True)])
    assert compile_concurrently([Fake(7)]) == [7]


def test_serial_switch_compiles_in_the_callers_thread(monkeypatch):
    seen = []

    class Fake:
        def compile(self):
            seen.append(threading.current_thread().name)
            return len(seen)

    monkeypatch.setenv("LOPT_COMPILE_SERIAL", "1")
    assert compile_concurrently([Fake(), Fake(), Fake()]) == [1, 2, 3]
    assert set(seen) == {threading.current_thread().name}
