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
    assert len(set(seen)) == 3  # one thread per program
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


def test_a_program_compiles_while_the_next_one_is_lowered(monkeypatch):
    """Functions are lowered in the caller's thread, one at a time, and each program starts
    compiling as soon as it is lowered: the second lowering sees the first compile running."""
    monkeypatch.delenv("LOPT_COMPILE_SERIAL", raising=False)
    first_compiling, second_lowered = threading.Event(), threading.Event()
    lowered_in = []

    class First:
        def compile(self):
            first_compiling.set()
            assert second_lowered.wait(10), "the second program was not lowered meanwhile"
            return "first"

    class Second:
        def compile(self):
            return "second"

    def lower_first():
        lowered_in.append(threading.current_thread().name)
        return First()

    def lower_second():
        lowered_in.append(threading.current_thread().name)
        assert first_compiling.wait(10), "the first program did not start compiling"
        second_lowered.set()
        return Second()

    assert compile_concurrently([lower_first, lower_second]) == ["first", "second"]
    assert set(lowered_in) == {threading.current_thread().name}
    x = jnp.arange(3.0)
    compiled = compile_concurrently([lambda: jax.jit(lambda v: v + 1.0).lower(x),
                                     jax.jit(lambda v: v * 3.0).lower(x)])
    np.testing.assert_array_equal(np.asarray(compiled[0](x)), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.asarray(compiled[1](x)), [0.0, 3.0, 6.0])
