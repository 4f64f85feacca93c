"""Every registered task trains; families vmap; mixtures group by shape; batches are keyed."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.tasks as T
from lopt.tasks import Task, TaskMixture, as_groups, sample_task
from lopt.tasks.classify import ACTIVATION_NAMES

# Compiling these on a CPU takes longest (convolutions, recurrences, attention; the rescaled
# mixtures, whose wrapping of every group tests/tasks/test_augment.py checks in the fast run).
SLOW = {"text_lstm", "text_transformer", "digits_cnn", "cnn_family", "mlp_family_rescaled",
        "mlp_family_half_rescaled", "text_lstm_wide", "text_transformer_wide", "digits_cnn_wide"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in T.names()]


@functools.cache
def concrete(name: str) -> Task:
    return sample_task(T.get(name), jax.random.key(0))


@functools.cache
def adam_run(name: str):
    """(loss before, loss after 50 Adam steps) on one fixed batch; compiled once per task."""
    task = concrete(name)
    tx = optax.adam(1e-2)

    @jax.jit
    def run(key):
        k_init, k_batch, k_steps = jax.random.split(key, 3)
        params = task.init(k_init)
        fixed = task.sample_batch(k_batch)

        def step(carry, k):
            p, s = carry
            g = jax.grad(task.loss)(p, task.sample_batch(k))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (trained, _), _ = jax.lax.scan(
            step, (params, tx.init(params)), jax.random.split(k_steps, 50)
        )
        return task.loss(params, fixed), task.loss(trained, fixed), trained

    return run(jax.random.key(1))


@pytest.mark.parametrize("name", PARAMS)
def test_registered_task_inits_and_50_adam_steps_lower_loss(name):
    before, after, trained = adam_run(name)
    assert math.isfinite(float(before)) and math.isfinite(float(after))
    assert float(after) < 0.9 * float(before), (name, float(before), float(after))
    task = concrete(name)
    norm = float(task.normalizer(after))
    assert 0.0 <= norm < float(task.normalizer(jnp.nan))
    if task.eval_loss is not None:
        assert math.isfinite(float(task.eval_loss(trained, jax.random.key(2))))


@pytest.mark.parametrize("name", ["digits_mlp", "mnist1d_mlp", "digits_cnn", "nqm"])
def test_batches_deterministic_given_key_and_sampled_in_jit(name):
    task = concrete(name)
    sample = jax.jit(task.sample_batch)
    a, b = sample(jax.random.key(5)), sample(jax.random.key(5))
    c = sample(jax.random.key(6))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
    assert any(not np.array_equal(x, y) for x, y in pairs)
    # eager and jitted draws agree: the sampler is pure index arithmetic on device arrays
    eager = task.sample_batch(jax.random.key(5))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, eager)


def test_lm_batches_are_shifted_windows_of_the_corpus():
    from lopt.tasks.data import load_stdlib_text

    task = concrete("text_lstm")
    tokens = np.asarray(task.sample_batch(jax.random.key(0))["tokens"])
    assert tokens.shape == (16, 33)
    corpus = load_stdlib_text().train.tobytes()
    assert tokens[0].astype(np.uint8).tobytes() in corpus


@pytest.mark.parametrize("name", ["digits_mlp_family", "mnist1d_mlp_family", "quadratic_family"])
def test_family_vmaps_over_four_configs(name):
    fam = T.get(name)
    cfgs = jax.vmap(fam.sample)(jax.random.split(jax.random.key(0), 4))
    keys = jax.random.split(jax.random.key(1), 4)

    def one(cfg, key):
        task = fam.task(cfg)
        params = task.init(key)
        batch = task.sample_batch(key)
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        return params, loss, task.normalizer(loss)

    params, losses, norms = jax.jit(jax.vmap(one))(cfgs, keys)
    assert losses.shape == (4,) and bool(jnp.all(jnp.isfinite(losses)))
    assert all(leaf.shape[0] == 4 for leaf in jax.tree.leaves(params))
    # the four configurations really differ, and vmapped == one at a time
    assert len({float(v) for v in losses}) == 4
    single = jax.jit(one)
    for i in range(4):
        cfg_i = jax.tree.map(lambda x, i=i: x[i], cfgs)
        _, loss_i, _ = single(cfg_i, keys[i])
        np.testing.assert_allclose(float(loss_i), float(losses[i]), rtol=2e-4, atol=1e-5)


def test_classifier_family_configs_vary_init_scale_activation_and_subset():
    fam = T.get("digits_mlp_family")
    cfgs = jax.vmap(fam.sample)(jax.random.split(jax.random.key(0), 64))
    scales = np.exp(np.asarray(cfgs["log_init_scale"]))
    assert 0.5 <= scales.min() < scales.max() <= 2.0
    assert set(np.asarray(cfgs["act"]).tolist()) == set(range(len(ACTIVATION_NAMES)))
    assert len(set(np.asarray(cfgs["data_offset"]).tolist())) > 32
    # init scale multiplies every parameter
    cfg = jax.tree.map(lambda x: x[0], cfgs)
    unit = dict(cfg, log_init_scale=jnp.float32(0.0))
    init = jax.jit(lambda c, k: fam.task(c).init(k))
    p1, p0 = init(cfg, jax.random.key(3)), init(unit, jax.random.key(3))
    k = jax.tree.leaves(p0)[1]
    np.testing.assert_allclose(jax.tree.leaves(p1)[1], k * scales[0], rtol=1e-5)


def shape_signature(group, seed: int = 0) -> tuple:
    task = group.task(group.sample(jax.random.key(seed)))
    params = jax.eval_shape(task.init, jax.random.key(seed))
    batch = jax.eval_shape(task.sample_batch, jax.random.key(seed))
    return tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves((params, batch)))


def test_single_activation_family_computes_only_that_activation():
    """One allowed activation is a static choice: the vmapped loss program contains no other
    activation (a traced index would evaluate every candidate), and its losses equal the
    fixed task's."""
    import dataclasses

    fam = dataclasses.replace(T.get("digits_mlp_family"), activations=("relu",))
    cfgs = jax.vmap(fam.sample)(jax.random.split(jax.random.key(0), 4))

    def loss(cfg, key):
        task = fam.task(cfg)
        params = task.init(key)
        return task.loss(params, task.sample_batch(key))

    def loss_grad_program(family, cfgs) -> str:  # the training step's part: params given
        def grad(cfg, params, key):
            task = family.task(cfg)
            return jax.grad(task.loss)(params, task.sample_batch(key))

        keys = jax.random.split(jax.random.key(1), 4)
        params = jax.vmap(lambda c, k: family.task(c).init(k))(cfgs, keys)
        return str(jax.make_jaxpr(jax.vmap(grad))(cfgs, params, keys))

    relu_only = loss_grad_program(fam, cfgs)
    assert "tanh" not in relu_only and "logistic" not in relu_only
    # all four activations: a traced index, and the other activations are in the program
    assert "tanh" in loss_grad_program(T.get("digits_mlp_family"), cfgs)
    keys = jax.random.split(jax.random.key(1), 4)
    got = jax.vmap(loss)(cfgs, keys)
    for i in range(4):  # same numbers as the relu family member computed on its own
        cfg_i = jax.tree.map(lambda x, i=i: x[i], cfgs)
        np.testing.assert_allclose(float(got[i]), float(loss(cfg_i, keys[i])), rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["mlp_family", "cnn_family", "mlp_family_small", "mlp_broad"])
def test_mixture_groups_share_shapes_within_and_differ_across(name):
    mix = T.get(name)
    assert isinstance(mix, TaskMixture) and as_groups(mix) == mix.groups
    sigs = [shape_signature(g) for g in mix.groups]
    assert len(set(sigs)) == len(sigs), "each group must be one distinct shape"
    for group, sig in zip(mix.groups, sigs, strict=True):
        for seed in (1, 2):  # other configs of the same group: same shapes
            assert shape_signature(group, seed) == sig


def test_mlp_family_covers_both_datasets():
    names = [g.name for g in T.get("mlp_family").groups]
    assert any(n.startswith("digits") for n in names)
    assert any(n.startswith("mnist1d") for n in names)


def test_sample_task_is_deterministic_in_the_key():
    mix = T.get("mlp_family")
    a = sample_task(mix, jax.random.key(4))
    b = sample_task(mix, jax.random.key(4))
    assert a.name == b.name
    pa, pb = a.init(jax.random.key(0)), b.init(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, pa, pb)
    seen = {sample_task(mix, jax.random.key(s)).name for s in range(12)}
    assert len(seen) > 2


def test_normalizers_bound_and_map_nonfinite_to_bound():
    cls = concrete("digits_mlp")
    bound = 1.5 * math.log(10)
    np.testing.assert_allclose(float(cls.normalizer(jnp.inf)), bound, rtol=1e-6)
    np.testing.assert_allclose(float(cls.normalizer(jnp.nan)), bound, rtol=1e-6)
    np.testing.assert_allclose(float(cls.normalizer(100.0)), bound, rtol=1e-6)
    assert float(cls.normalizer(0.5)) == pytest.approx(0.5)
    quad = concrete("nqm")
    assert float(quad.normalizer(jnp.nan)) == pytest.approx(1.5)
    params = quad.init(jax.random.key(0))
    start = float(quad.normalizer(quad.loss(params, quad.sample_batch(jax.random.key(1)))))
    assert 0.2 < start < 1.5  # ~1 at initialization by construction


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        T.get("no_such_task")
    for name in ("digits_mlp", "mlp_family", "nqm"):
        assert name in str(err.value)
    assert T.get("digits_mlp") is T.get("digits_mlp")
    assert all(T.describe(n) for n in T.names())


def test_nqm_matches_its_definition():
    task = concrete("nqm")
    params = {"phi": jnp.arange(16, dtype=jnp.float32) / 16}
    batch = task.sample_batch(jax.random.key(0))
    h = np.logspace(-2, 0, 16)
    d = np.asarray(params["phi"]) - np.asarray(batch["mu"])
    assert float(task.loss(params, batch)) == pytest.approx(0.5 * np.sum(h * d * d), rel=1e-5)
    mus = jax.vmap(task.sample_batch)(jax.random.split(jax.random.key(1), 4000))["mu"]
    assert float(jnp.std(mus)) == pytest.approx(0.3, rel=0.05)


def test_patch_conv_matches_lax_convolution():
    from lopt.tasks.cnn import PatchConv

    for size, stride in ((8, 1), (8, 2), (7, 2)):
        x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
        layer = PatchConv(5, stride)
        params = layer.init(jax.random.key(1), x)
        kernel, bias = params["params"]["kernel"], params["params"]["bias"]
        ref = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        got = layer.apply(params, x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref + bias, rtol=1e-4, atol=1e-5)


def test_full_batch_task_ignores_the_key_and_uses_every_example():
    task = concrete("digits_mlp_fullbatch")
    a, b = task.sample_batch(jax.random.key(0)), task.sample_batch(jax.random.key(1))
    from lopt.tasks.data import load_digits

    assert a["x"].shape[0] == len(load_digits().x_train)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_autoencoder_normalizer_is_relative_to_predicting_the_mean():
    task = concrete("digits_autoencoder")
    batch = task.sample_batch(jax.random.key(0))
    params = jax.tree.map(jnp.zeros_like, task.init(jax.random.key(0)))
    zero = float(task.loss(params, batch))  # predicting 0 is worse than predicting the mean
    assert float(task.normalizer(zero)) > 1.0
    assert float(task.normalizer(jnp.nan)) == pytest.approx(1.5)


def _toy_images(n_test):
    from lopt.tasks.data import Dataset

    rng = np.random.default_rng(0)
    return Dataset(
        "toy",
        rng.random((20, 4, 4), dtype=np.float32),
        rng.integers(0, 3, 20).astype(np.int32),
        rng.random((n_test, 4, 4), dtype=np.float32),
        rng.integers(0, 3, n_test).astype(np.int32),
        num_classes=3,
    )


def test_builders_check_widths_and_name_by_shape():
    from lopt.tasks.cnn import cnn_family, cnn_task
    from lopt.tasks.mlp import mlp_family, mlp_task

    ds = _toy_images(5)
    assert mlp_task(ds, hidden=()).name == "toy_mlp_linear_b128"
    assert mlp_task(ds, hidden=(8,), batch_size=None).name == "toy_mlp_8_bfull"
    assert mlp_family(ds, hidden=(8, 4), batch_size=16).name == "toy_mlp_8x4_b16"
    assert cnn_family(ds, channels=(4,)).name == "toy_cnn_4_b128"
    for build, kwargs, match in (
        (mlp_task, {"hidden": (0,)}, "hidden widths"),
        (mlp_family, {"hidden": (8, -1)}, "hidden widths"),
        (cnn_task, {"channels": ()}, "channels"),
        (cnn_family, {"channels": (4, 0)}, "channels"),
    ):
        with pytest.raises(ValueError, match=match):
            build(ds, **kwargs)


def test_autoencoder_is_an_mlp_back_to_the_input_and_needs_a_test_split_to_eval():
    from lopt.tasks.mlp import autoencoder_task

    task = autoencoder_task(_toy_images(5), hidden=(8,), batch_size=4)
    shapes = jax.tree.map(lambda x: x.shape, jax.eval_shape(task.init, jax.random.key(0)))
    assert shapes == {"params": {"Dense_0": {"kernel": (16, 8), "bias": (8,)},
                                 "Dense_1": {"kernel": (8, 16), "bias": (16,)}}}
    assert math.isfinite(float(task.eval_loss(task.init(jax.random.key(0)), None)))
    assert autoencoder_task(_toy_images(0), hidden=(8,)).eval_loss is None
    from lopt.tasks.mlp import mlp_task

    assert mlp_task(_toy_images(0), hidden=(8,)).eval_loss is None


def test_lm_windows_reach_the_end_of_the_corpus():
    from lopt.tasks.data import TextCorpus
    from lopt.tasks.lm import LSTMLM, lm_task

    tokens = np.arange(7, dtype=np.uint8)  # windows of 5 may start at 0, 1 or 2
    corpus = TextCorpus("toy", tokens, tokens, vocab_size=8, files=())
    task = lm_task("toy", LSTMLM(8, 4, 4), corpus, seq_len=4, batch_size=64, eval_batch_size=1)
    starts = np.asarray(task.sample_batch(jax.random.key(0))["tokens"])[:, 0]
    assert set(starts.tolist()) == {0, 1, 2}
