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


def _star_update(opt):
    """A jittable update of ``opt`` on a layer's parameters (XLA makes library reductions
    for tensors from ~128x128 on)."""
    params = {"w": jnp.ones((256, 128)), "b": jnp.ones((128,))}
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
    theta = opt.init(jax.random.PRNGKey(0))
    state = opt.init_state(theta, params)
    return (lambda p, s, g: opt.update(theta, s, g, p)), (params, state, grads)


def test_optimizer_options_only_for_updates_that_average_over_a_tensor():
    from lopt.optimizers import STAR, Blackbox
    from lopt.utils.compile import LIBRARY_FUSION_OPTION, optimizer_options

    off = {LIBRARY_FUSION_OPTION: ""}
    assert optimizer_options(STAR(step_size_controller=True)) == off  # per tensor by default
    assert optimizer_options(STAR(nominal_controller=True,
                                  nominal_controller_aggregation="tensor")) == off
    assert optimizer_options(STAR()) == {}
    assert optimizer_options(STAR(step_size_controller=True,
                                  step_size_aggregation="coordinate")) == {}
    assert optimizer_options(STAR(nominal_controller=True)) == {}  # per coordinate
    assert optimizer_options(Blackbox()) == {}
    assert optimizer_options(object()) == {}  # anything else, e.g. an optax optimizer


def test_programs_that_backpropagate_through_the_update_compile_without_library_fusions(
    tmp_path,
):
    """TBPTT differentiates the update: its reductions, handed to the library, were ~40% of a
    step. The trainer (and so the distributed worker, by the same config property) asks for
    the option for TBPTT only."""
    from lopt.metatrain.config import MetaTrainConfig
    from lopt.metatrain.trainer import MetaTrainer
    from lopt.optimizers import STAR, Blackbox
    from lopt.utils.compile import LIBRARY_FUSION_OPTION, optimizer_options

    off = {LIBRARY_FUSION_OPTION: ""}
    assert optimizer_options(STAR(), differentiated=True) == off
    assert optimizer_options(Blackbox(), differentiated=True) == off
    for estimator, expected in (("tbptt", off), ("pes", {}), ("es", {})):
        config = MetaTrainConfig(optimizer="star", tasks="digits_mlp", estimator=estimator,
                                 outer_steps=1, num_slots=1, truncation=2, eval_every=0)
        assert config.differentiates_optimizer == (estimator == "tbptt")
        trainer = MetaTrainer(config, tmp_path / estimator)
        assert trainer._jit.keywords["extra_options"] == expected


def test_shipped_star_spec_carries_the_options_and_they_remove_library_reductions():
    """The shipped STAR (learned step size per tensor) resolves with the option; compiled with
    it, its update has no library reduction left, where XLA's defaults make one (the mean that
    split the MLP into a loop per hidden unit)."""
    from lopt.training.optimizers import resolve
    from lopt.utils.compile import LIBRARY_FUSION_OPTION, jit, optimizer_options

    spec = resolve("star")
    assert spec.xla_options == {LIBRARY_FUSION_OPTION: ""}
    from lopt.optimizers import STAR

    fun, args = _star_update(STAR(step_size_controller=True))
    default = jax.jit(fun).lower(*args).compile().as_text()
    if "__ynn_fusion" not in default:
        pytest.skip("this jaxlib makes no library reductions here")
    ours = jit(fun, extra_options=spec.xla_options).lower(*args).compile().as_text()
    assert "__ynn_fusion" not in ours
    plain = optimizer_options(STAR())
    assert "__ynn_fusion" in jit(fun, extra_options=plain).lower(*args).compile().as_text()


def test_an_option_this_xla_does_not_know_is_detected():
    from lopt.utils.compile import LIBRARY_FUSION_OPTION, _accepts_option

    assert _accepts_option(LIBRARY_FUSION_OPTION, "")
    assert not _accepts_option("xla_cpu_no_such_option_in_any_version", "")
