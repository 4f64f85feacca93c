"""The shared feature recipe: bounded decays, accumulators, normalization, fusion."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers import STAR, AccumulatorConfig, Blackbox, bounded_decay
from lopt.optimizers.features import (
    NUM_INPUTS,
    NUM_TENSOR_FEATURES,
    RMS_EPS,
    channel_rms,
    compute_layout,
    factored_dims,
    init_leaf_state,
    leaf_features,
    time_features,
    update_accumulators,
)


def test_decay_equals_base_at_zero_and_matches_paper_form_nearby():
    base = jnp.array([0.9, 0.99, 0.999])
    np.testing.assert_allclose(bounded_decay(base, jnp.zeros(3)), base, rtol=1e-6)
    # The paper's form: 1 - (1 - b0) exp(10 theta); agree to first order near theta = 0.
    th = 1e-3
    paper = 1 - (1 - base) * np.exp(10 * th)
    ours = bounded_decay(base, jnp.full(3, th))
    np.testing.assert_allclose(1 - ours, 1 - paper, rtol=2e-3)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 10.0, 1e3, 1e30])
def test_decays_stay_in_open_unit_interval_for_any_theta(scale):
    theta = scale * jax.random.normal(jax.random.PRNGKey(1), (1000,))
    theta = jnp.concatenate([theta, jnp.array([jnp.inf, -jnp.inf, 0.0])])
    for b0 in (0.5, 0.9, 0.999):
        d = np.asarray(bounded_decay(jnp.array(b0), theta))
        assert np.all((d > 0) & (d < 1)), (b0, d.min(), d.max())


def test_extreme_theta_decays_keep_accumulators_finite():
    opt = STAR()
    theta = opt.init(jax.random.PRNGKey(0))
    decays = AccumulatorConfig().decays(jax.tree.map(lambda x: x - 1e6, theta["decays"]))
    for v in jax.tree.leaves(decays):
        assert np.all((np.asarray(v) > 0) & (np.asarray(v) < 1))
    params = {"w": jnp.ones((4, 3))}
    state = opt.init_state(theta, params)
    theta_bad = {**theta, "decays": jax.tree.map(lambda x: x - 1e6, theta["decays"])}
    step = jax.jit(opt.update)
    for _ in range(5):
        params, state = step(theta_bad, state, {"w": jnp.ones((4, 3))}, params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((params, state)))


def test_factored_dims_are_the_two_largest():
    assert factored_dims((7,)) is None
    assert factored_dims(()) is None
    assert factored_dims((5, 3)) == (1, 0)
    assert factored_dims((3, 3, 16, 32)) == (2, 3)


def test_accumulators_by_hand_for_a_matrix():
    g = jax.random.normal(jax.random.PRNGKey(2), (6, 4))
    st = init_leaf_state(g)
    decays = AccumulatorConfig().decays(AccumulatorConfig().init_theta())
    st = update_accumulators(st, g, decays)
    st = update_accumulators(st, 2 * g, decays)
    g2 = np.asarray(g) ** 2
    for i, b in enumerate((0.9, 0.99, 0.999)):
        np.testing.assert_allclose(st.m[i], (1 - b) * (b * g + 2 * g), rtol=1e-4)
        # largest dim is 0 (6 rows): row stats average over it, column stats over dim 1.
        np.testing.assert_allclose(st.row[i], (1 - b) * (b + 4) * g2.mean(0), rtol=1e-4)
        np.testing.assert_allclose(st.col[i], (1 - b) * (b + 4) * g2.mean(1), rtol=1e-4)
    np.testing.assert_allclose(st.v, 0.001 * (0.999 + 4) * g2, rtol=1e-4)


@pytest.mark.parametrize("shape", [(1,), (7,), (6, 4), (3, 3, 2, 5)])
def test_features_have_unit_rms_after_normalization(shape):
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    p = jax.random.normal(k1, shape)
    g = jax.random.normal(k2, shape)
    st = init_leaf_state(p)
    decays = AccumulatorConfig().decays(AccumulatorConfig().init_theta())
    for _ in range(3):
        st = update_accumulators(st, g, decays)
    feats = leaf_features(p, g, st)
    assert len(feats.channels) == NUM_TENSOR_FEATURES
    small = 0
    for ch, r in zip(feats.channels, np.asarray(feats.rms), strict=True):
        full = np.broadcast_to(np.asarray(ch, np.float64), shape)
        assert np.all(np.isfinite(full))
        # spec: each channel is divided by sqrt(mean over the whole tensor of f^2 + 1e-5), so
        # its RMS afterwards is exactly sqrt(ms / (ms + 1e-5)) -- ~1, less for tiny channels
        ms = np.mean(full**2)
        np.testing.assert_allclose(r, np.sqrt(ms + 1e-5), rtol=1e-5)
        rms = np.sqrt(np.mean((full / r) ** 2))
        np.testing.assert_allclose(rms, np.sqrt(ms / (ms + 1e-5)), rtol=1e-4)
        small += ms < 1e-3
    assert small >= 3  # the slow momentum channels: where the epsilon matters


@pytest.mark.parametrize("shape", [(800, 1000), (20, 50, 1000), (1000, 800)])
def test_channel_rms_of_large_tensors_matches_float64(shape):
    """The normalizers of a ~1M-coordinate tensor within float32 rounding of a float64 sum.
    Reducing all axes at once compiled to one sequential float32 accumulator per channel,
    1e-3 off on a 784x1024 tensor."""
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    full = [1.0 + jax.random.normal(k, shape) for k in keys[:3]]
    small = jax.random.uniform(keys[3], shape[:-1] + (1,))  # a factored statistic's shape
    channels = [*full, full[0] * full[1], small]
    got = np.asarray(channel_rms(channels))
    want = [np.sqrt(np.mean(np.broadcast_to(np.asarray(c, np.float64), c.shape) ** 2) + RMS_EPS)
            for c in channels]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_time_features():
    t = np.asarray(time_features(jnp.array(10)))
    assert t.shape == (NUM_INPUTS - NUM_TENSOR_FEATURES,) == (11,)
    np.testing.assert_allclose(t[2], np.tanh(0.0), atol=1e-7)  # tau = 10
    np.testing.assert_allclose(t[0], np.tanh(9.0), rtol=1e-6)


def test_about_two_hundred_meta_parameters():
    from lopt.optimizers import num_meta_params

    assert num_meta_params(Blackbox().init(jax.random.PRNGKey(0))) == 39 * 4 + 4 + 20 + 10 + 7


@pytest.mark.parametrize("opt", [STAR(), Blackbox()], ids=["star", "blackbox"])
def test_update_never_materializes_a_feature_matrix(opt):
    """The fused MLP must not build a [num_params, num_features] array (speed, memory)."""
    params = {"w": jnp.ones((96, 80))}
    theta = opt.init(jax.random.PRNGKey(0))
    state = opt.init_state(theta, params)
    hlo = jax.jit(opt.update).lower(theta, state, params, params).compile().as_text()
    n = 96 * 80
    for width in range(4, NUM_INPUTS + 1):
        for pattern in (rf"f32\[{n},{width}\]", rf"f32\[{width},{n}\]",
                        rf"f32\[96,80,{width}\]", rf"f32\[{width},96,80\]"):
            assert not re.search(pattern, hlo), pattern


def test_tensor_statistics_by_hand():
    """Two steps with gradients g1, g2; momenta (no bias correction) and v written out in
    NumPy; log rms(m_i / sqrt(v + 1e-6)) (with the RMS epsilon 1e-5) and cos(g2, m_i)."""
    from lopt.optimizers.features import (
        AccumulatorConfig,
        init_leaf_state,
        leaf_features,
        tensor_statistics,
        update_accumulators,
    )

    rng = np.random.default_rng(0)
    g1 = rng.normal(size=(4, 3)).astype(np.float32)
    g2 = (0.3 * g1 + rng.normal(size=(4, 3))).astype(np.float32)
    acc = AccumulatorConfig()
    decays = acc.decays(acc.init_theta())
    st = init_leaf_state(jnp.zeros((4, 3)))
    for g in (g1, g2):
        st = update_accumulators(st, jnp.asarray(g), decays)
    feats = leaf_features(jnp.zeros((4, 3)), jnp.asarray(g2), st)
    got = np.asarray(tensor_statistics(jnp.asarray(g2), st, feats.rms))
    betas = np.array([0.9, 0.99, 0.999])
    m = [b * (1 - b) * g1 + (1 - b) * g2 for b in betas]
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2
    log_rms = [np.log(np.sqrt(np.mean((mi / np.sqrt(v + 1e-6)) ** 2) + 1e-5)) for mi in m]
    cos = [np.sum(g2 * mi) / np.sqrt(np.sum(g2**2) * np.sum(mi**2)) for mi in m]
    np.testing.assert_allclose(got, np.array(log_rms + cos), rtol=2e-5, atol=1e-6)


def test_tensor_features_switch_adds_six_inputs_that_reach_the_update():
    from lopt.optimizers import STAR

    params = {"w": jnp.ones((5, 4)), "b": jnp.zeros((4,))}
    grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size).reshape(p.shape), params)
    off = STAR(output_init_scale=1.0)
    on = STAR(output_init_scale=1.0, tensor_features=True)
    theta = on.init(jax.random.PRNGKey(0))
    assert theta["mlp"]["w0"].shape == (45, 4)
    assert off.init(jax.random.PRNGKey(0))["mlp"]["w0"].shape == (39, 4)
    zero_rows = {**theta, "mlp": {**theta["mlp"], "w0": theta["mlp"]["w0"].at[39:].set(0.0)}}
    plain = {**theta, "mlp": {**theta["mlp"], "w0": theta["mlp"]["w0"][:39]}}
    s0 = on.init_state(theta, params)
    d_on, _ = on.deltas(zero_rows, s0, grads, params)
    d_off, _ = off.deltas(plain, s0, grads, params)
    for a, b in zip(jax.tree.leaves(d_on), jax.tree.leaves(d_off), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    d_full, _ = on.deltas(theta, s0, grads, params)
    assert any(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(d_full), jax.tree.leaves(d_off), strict=True))


def _plain_sums_of_squares(arrays, axes):
    """Reference: one ordinary ``sum(a**2)`` per array, which JAX differentiates itself."""
    return tuple(jnp.sum(jnp.square(a), axis=axes) for a in arrays)


# slow: ~12-19 s each, compiling JAX's own derivative of the plain sums (the reference);
# the fast run still differentiates the hand-written rule in the test below
@pytest.mark.slow
@pytest.mark.parametrize("opt", [STAR(), Blackbox()], ids=["star", "blackbox"])
def test_meta_gradient_through_the_update_matches_plain_sums(opt, monkeypatch):
    """Truncated backpropagation differentiates the update with respect to theta. The gradient
    channel does not depend on theta (a symbolic-zero tangent), which JAX's own derivative of
    the variadic reduction behind the features' RMS could not handle; the hand-written one
    must agree with the derivative of plain per-channel sums."""
    import lopt.optimizers.features as features

    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (5, 3)),
              "b": jax.random.normal(jax.random.PRNGKey(1), (3,))}
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(3.0 * p), params)
    theta = opt.init(jax.random.PRNGKey(2))
    theta = jax.tree.map(lambda x: x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), theta)

    def meta_loss(theta):
        state = opt.init_state(theta, params)
        new, state = opt.update(theta, state, grads, params)
        new, _ = opt.update(theta, state, grads, new)
        return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(new))

    ours = jax.grad(meta_loss)(theta)
    monkeypatch.setattr(features, "_sums_of_squares", _plain_sums_of_squares)
    reference = jax.grad(meta_loss)(theta)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ours)) > 0


def test_hand_written_derivative_of_the_sums_of_squares_is_that_of_plain_sums():
    """The fast run's check of the rule the slow test above exercises end to end: reverse-mode
    gradients of ``_sums_of_squares`` (one input constant, as the gradient channel is under
    truncated backpropagation) against JAX's derivative of ordinary ``sum(a**2)``, on a
    weighted combination of the outputs so every output's cotangent differs."""
    import lopt.optimizers.features as features

    a = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    b = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    const = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
    weights = jnp.arange(1.0, 16.0).reshape(3, 5)

    def loss(fn, a, b):
        return jnp.sum(weights * jnp.stack(fn((a, const, 2.0 * b), (0,))))

    ours = jax.grad(lambda a, b: loss(features._sums_of_squares, a, b), argnums=(0, 1))(a, b)
    reference = jax.grad(lambda a, b: loss(_plain_sums_of_squares, a, b), argnums=(0, 1))(a, b)
    for x, y in zip(ours, reference, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(ours[0]))) > 0


@pytest.mark.parametrize("opt", [STAR(), Blackbox()], ids=["star", "blackbox"])
def test_meta_gradient_is_finite_with_rows_that_never_see_a_gradient(opt, monkeypatch):
    """A first-layer row fed by an always-blank input (digits' corner pixels) gets exactly zero
    gradients; its factored statistics sit at ~1e-31, where the reciprocal square root's
    derivative overflows. The update's values must not change and the meta-gradient must stay
    finite."""
    import lopt.optimizers.features as features

    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (5, 3)), "b": jnp.ones((3,))}
    # a dead input (row 0) and a dead unit (column 0, and its bias)
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    grads = {"w": w.at[0].set(0.0).at[:, 0].set(0.0), "b": jnp.array([0.0, 0.1, 0.2])}
    theta = opt.init(jax.random.PRNGKey(2))

    def two_steps(theta):
        state = opt.init_state(theta, params)
        new, state = opt.update(theta, state, grads, params)
        return opt.update(theta, state, grads, new)[0]

    def meta_loss(theta):
        return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(two_steps(theta)))

    grad = jax.grad(meta_loss)(theta)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grad))
    assert np.any(np.asarray(grad["decays"]["factored"]) != 0)  # live rows still contribute
    # values unchanged: the guard only removes a derivative
    plain = jax.tree.map(np.asarray, two_steps(theta))
    monkeypatch.setattr(features, "_no_gradient_if_tiny", lambda stat: stat)
    unguarded = jax.tree.map(np.asarray, two_steps(theta))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(unguarded), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compute_layout_moves_a_long_axis_last_only_behind_a_short_last_axis():
    assert compute_layout((32, 10)) == (1, 0)
    assert compute_layout((3, 3, 32, 8)) == (0, 1, 3, 2)
    assert compute_layout((6, 32, 5, 4)) == (0, 2, 3, 1)
    assert compute_layout((64, 16)) is None  # a last axis of 16 is long enough
    assert compute_layout((3, 3, 8, 4)) is None  # no axis of 16 or more to move there
    assert compute_layout((10,)) is None
    assert compute_layout((10, 10)) is None


@pytest.mark.parametrize(
    "shape, col_axis",
    [((32, 10), 0), ((6, 32, 5, 4), 0)],
    ids=["classifier-kernel", "4d"],
)
@pytest.mark.parametrize("opt", [STAR(output_init_scale=1.0), Blackbox()], ids=["star", "blackbox"])
def test_update_computed_in_another_layout_is_the_transposed_update(opt, shape, col_axis):
    """A tensor with a short last axis is updated in another axis order (``compute_layout``).
    Oracle: the same optimizer on the transposed tensor, whose last axis is long and which
    takes the plain path; the update and every accumulator must be its transpose (up to the
    order of float sums) over several steps. ``col_axis``: where the moved axis sits among the
    column statistics' axes (by hand)."""
    perm = compute_layout(shape)
    inv = tuple(np.argsort(perm))
    theta = opt.init(jax.random.PRNGKey(0))
    theta = jax.tree.map(lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), theta)
    p = {"w": jax.random.normal(jax.random.PRNGKey(1), shape)}
    q = {"w": jnp.transpose(p["w"], perm)}
    sp, sq = opt.init_state(theta, p), opt.init_state(theta, q)
    for i in range(4):
        g = jax.random.normal(jax.random.PRNGKey(10 + i), shape) * (1.0 + i)
        dp, sp = opt.deltas(theta, sp, {"w": g}, p)
        dq, sq = opt.deltas(theta, sq, {"w": jnp.transpose(g, perm)}, q)
        close = dict(rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(dp["w"], jnp.transpose(dq["w"], inv), **close)
        a, b = sp.leaves["w"], sq.leaves["w"]
        np.testing.assert_allclose(a.m, jnp.transpose(b.m, (0, *(1 + i for i in inv))), **close)
        np.testing.assert_allclose(a.v, jnp.transpose(b.v, inv), **close)
        np.testing.assert_allclose(a.row, b.row, **close)
        np.testing.assert_allclose(a.col, jnp.moveaxis(b.col, -1, 1 + col_axis), **close)
        assert float(jnp.max(jnp.abs(dp["w"]))) > 1e-4
        p = {"w": p["w"] + dp["w"]}
        q = {"w": q["w"] + dq["w"]}


def test_transpose_back_through_the_identity_product_is_exact():
    """The identity product that keeps XLA from fusing the transpose must not round: the
    result equals a plain transpose bit for bit (finite values, jitted and vmapped as in
    meta-training)."""
    from lopt.optimizers.learned import _transpose_back

    perm = (0, 2, 3, 1)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 6, 5, 4, 32)) * jnp.logspace(-30, 30, 32)
    got = jax.jit(jax.vmap(lambda a: _transpose_back(a, perm)))(x)
    want = jnp.transpose(x, (0, *(1 + i for i in np.argsort(perm))))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
