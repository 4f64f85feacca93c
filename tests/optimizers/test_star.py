"""Each STAR switch changes the update exactly as spec section 3 says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers import STAR, Blackbox
from lopt.optimizers.features import ADAM_EPS

KEY = jax.random.PRNGKey(0)


def make_problem(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "w": jax.random.normal(k1, (5, 3)),
        "b": jax.random.normal(k2, (3,)),
        "s": jnp.array(0.7),
    }
    grads = [
        jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.fold_in(k3, i), p.shape), params)
        for i in range(3)
    ]
    return params, grads


def run(opt, theta, params, grads):
    state = opt.init_state(theta, params)
    traj = []
    for g in grads:
        params, state = opt.update(theta, state, g, params)
        traj.append(params)
    return traj, state


def hand_accumulators(grads_leaf):
    """Momenta (0.9, 0.99, 0.999) and v (0.999) by hand, no bias correction."""
    m = np.zeros((3,) + np.shape(grads_leaf[0]))
    v = np.zeros(np.shape(grads_leaf[0]))
    out = []
    for g in grads_leaf:
        g = np.asarray(g, np.float64)
        for i, b in enumerate((0.9, 0.99, 0.999)):
            m[i] = b * m[i] + (1 - b) * g
        v = 0.999 * v + 0.001 * g * g
        out.append((m.copy(), v.copy()))
    return out


NOMINAL_FORMULAS = {
    "sgd": lambda g, m, v: g,
    "sgdm": lambda g, m, v: m[2],
    "aggmo": lambda g, m, v: m.mean(0),
    "adam": lambda g, m, v: m[2] / np.sqrt(v + ADAM_EPS),
    "adam_aggmo": lambda g, m, v: m.mean(0) / np.sqrt(v + ADAM_EPS),
}


@pytest.mark.parametrize(
    "nominal,wd,mode,scale",
    [(name, 0.1, "scaled", 1.0) for name in sorted(NOMINAL_FORMULAS)]
    + [("adam_aggmo", 0.0, "scaled", 1.0), ("adam_aggmo", 0.05, "raw", 1.0)]
    # step_scale multiplies the whole change, the weight decay of either mode included
    + [("adam_aggmo", 0.1, "scaled", 0.3), ("sgdm", 0.05, "raw", 2.5)],
)
def test_multiplier_zero_is_nominal_only_by_hand(nominal, wd, mode, scale):
    alpha = 3e-3
    opt = STAR(step_multiplier=0.0, nominal=nominal, alpha=alpha, weight_decay=wd, decay_mode=mode,
               step_scale=scale)
    params, grads = make_problem()
    traj, _ = run(opt, opt.init(KEY), params, grads)
    w_eff = alpha * wd if mode == "scaled" else wd
    for name in params:
        p = np.asarray(params[name], np.float64)
        acc = hand_accumulators([np.atleast_1d(g[name]) for g in grads])
        for t, (m, v) in enumerate(acc):
            g = np.atleast_1d(np.asarray(grads[t][name], np.float64))
            step = alpha * NOMINAL_FORMULAS[nominal](g, m, v).reshape(p.shape)
            p = p - scale * (w_eff * p + step)
            np.testing.assert_allclose(traj[t][name], p, rtol=2e-5, atol=1e-6)


def test_preconditioning_divides_learned_term_by_sqrt_v():
    params, grads = make_problem(1)
    plain = STAR(nominal="none", weight_decay=0.0, precondition=False)
    pre = STAR(nominal="none", weight_decay=0.0, precondition=True)
    theta = plain.init(KEY)
    s0 = plain.init_state(theta, params)
    d_plain, _ = plain.deltas(theta, s0, grads[0], params)
    d_pre, st = pre.deltas(theta, s0, grads[0], params)
    for name in params:
        v = st.leaves[name].v.reshape(np.shape(params[name]))
        np.testing.assert_allclose(d_pre[name], d_plain[name] / np.sqrt(v + ADAM_EPS), rtol=1e-5)
    assert float(jnp.abs(d_plain["w"]).max()) > 0


@pytest.mark.parametrize("mode,factor", [("scaled", 1 - 2e-3 * 0.5), ("raw", 1 - 0.01)])
def test_weight_decay_shrinks_by_documented_factor(mode, factor):
    w = 0.5 if mode == "scaled" else 0.01
    opt = STAR(step_multiplier=0.0, nominal="none", alpha=2e-3, weight_decay=w, decay_mode=mode)
    assert opt.effective_weight_decay == pytest.approx(1 - factor)
    params, grads = make_problem(2)
    traj, _ = run(opt, opt.init(KEY), params, grads)
    for t in range(3):
        for name in params:
            np.testing.assert_allclose(traj[t][name], params[name] * factor ** (t + 1), rtol=1e-6)


def test_blackbox_is_star_without_inductive_biases():
    params, grads = make_problem(3)
    bb = Blackbox()
    star_bb = STAR(nominal="none", precondition=False, weight_decay=0.0, step_multiplier=1e-3)
    theta = bb.init(KEY)
    a, _ = run(bb, theta, params, grads)
    b, _ = run(star_bb, theta, params, grads)
    for x, y in zip(a, b, strict=True):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), x, y)
    # The blackbox step is lambda_s * d * exp(lambda_0 m): tiny but non-zero at meta-init.
    step = np.abs(np.asarray(a[0]["w"] - params["w"]))
    assert 0 < step.max() < 1e-2


def test_learned_term_is_added_on_top_of_nominal():
    params, grads = make_problem(4)
    full = STAR()
    nominal_only = STAR(step_multiplier=0.0)
    learned_only = STAR(nominal="none", weight_decay=0.0)
    theta = full.init(KEY)
    s0 = full.init_state(theta, params)
    d_full, _ = full.deltas(theta, s0, grads[0], params)
    d_nom, _ = nominal_only.deltas(theta, s0, grads[0], params)
    d_bb, _ = learned_only.deltas(theta, s0, grads[0], params)
    jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, b + c, rtol=1e-5, atol=1e-8),
                 d_full, d_nom, d_bb)


def _with_output_row(theta, out_index, value):
    mlp = dict(theta["mlp"])
    last = max(int(k[1:]) for k in mlp if k.startswith("w"))
    w = mlp[f"w{last}"].at[:, out_index].set(0.0)
    b = mlp[f"b{last}"].at[out_index].set(value)
    mlp[f"w{last}"], mlp[f"b{last}"] = w, b
    return {**theta, "mlp": mlp}


@pytest.mark.parametrize("aggregation", ["coordinate", "tensor"])
def test_nominal_controller_scales_nominal_step(aggregation):
    params, grads = make_problem(5)
    base = STAR(step_multiplier=0.0, weight_decay=0.0)
    ctrl = STAR(step_multiplier=0.0, weight_decay=0.0, nominal_controller=True,
                nominal_controller_multiplier=0.5, nominal_controller_aggregation=aggregation)
    theta = _with_output_row(ctrl.init(KEY), 2, 2.0)  # n = 2 everywhere
    s0 = ctrl.init_state(theta, params)
    d_ctrl, _ = ctrl.deltas(theta, s0, grads[0], params)
    d_base, _ = base.deltas(base.init(KEY), s0, grads[0], params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b * np.exp(1.0), rtol=1e-5),
                 d_ctrl, d_base)


def test_regularization_controller_scales_weight_decay_per_tensor():
    params, grads = make_problem(6)
    opt = STAR(step_multiplier=0.0, nominal="none", weight_decay=0.5,
               regularization_controller=True, regularization_controller_multiplier=1.0,
               regularization_controller_aggregation="tensor")
    theta = _with_output_row(opt.init(KEY), 2, np.log(3.0))
    s0 = opt.init_state(theta, params)
    d, _ = opt.deltas(theta, s0, grads[0], params)
    w_eff = opt.effective_weight_decay * 3.0
    jax.tree.map(lambda a, p: np.testing.assert_allclose(a, -w_eff * p, rtol=1e-5), d, params)


@pytest.mark.parametrize("nominal", ["adam_aggmo", "none"])
def test_both_controllers_read_their_own_outputs(nominal):
    """``n`` is output 2 and ``r`` output 3, also when the nominal term is off (n unused)."""
    params, grads = make_problem(7)
    opt = STAR(step_multiplier=0.0, nominal=nominal, weight_decay=0.5,
               nominal_controller=True, nominal_controller_multiplier=1.0,
               regularization_controller=True, regularization_controller_multiplier=1.0)
    theta = _with_output_row(_with_output_row(opt.init(KEY), 2, np.log(2.0)), 3, np.log(3.0))
    s0 = opt.init_state(theta, params)
    d, _ = opt.deltas(theta, s0, grads[0], params)
    plain = STAR(step_multiplier=0.0, nominal=nominal, weight_decay=0.0)
    d_nom, _ = plain.deltas(plain.init(KEY), s0, grads[0], params)  # zero when nominal="none"
    w_eff = opt.effective_weight_decay * 3.0
    jax.tree.map(lambda a, n, p: np.testing.assert_allclose(a, 2.0 * n - w_eff * p, rtol=1e-5),
                 d, d_nom, params)


@pytest.mark.parametrize("value", [0.7, -2.0, 1e6])
def test_step_size_controller_scales_the_whole_update_and_scaled_decay(value):
    """k = exp(R tanh(c / R)) by hand; nominal + learned terms scale by k, and so does the
    AdamW-style decay alpha * w * p (learned term large: full output scale)."""
    params, grads = make_problem(11)
    kw = dict(output_init_scale=1.0, step_multiplier=1e-3, weight_decay=0.3)
    opt = STAR(**kw, step_size_controller=True)
    theta = _with_output_row(opt.init(KEY), 2, value)  # c = value everywhere
    s0 = opt.init_state(theta, params)
    d, _ = opt.deltas(theta, s0, grads[0], params)
    no_wd = STAR(**{**kw, "weight_decay": 0.0})
    base_theta = {**theta, "mlp": {**theta["mlp"], "w2": theta["mlp"]["w2"][:, :2],
                                   "b2": theta["mlp"]["b2"][:2]}}
    d_base, _ = no_wd.deltas(base_theta, s0, grads[0], params)
    r = np.log(100.0)
    k = np.exp(r * np.tanh(value / r))
    w_eff = 1e-3 * 0.3 * k
    assert k <= 100.0 + 1e-9
    jax.tree.map(
        lambda a, b, p: np.testing.assert_allclose(a, k * b - w_eff * p, rtol=2e-5, atol=1e-9),
        d, d_base, params,
    )


@pytest.mark.parametrize("aggregation", ["tensor", "coordinate"])
def test_step_size_controller_aggregation(aggregation):
    """Per tensor, the ratio to the k = 1 update is one number per tensor; per coordinate it
    varies (random, full-size output weights make c differ between coordinates)."""
    params, grads = make_problem(12)
    opt = STAR(output_init_scale=1.0, step_multiplier=0.0, weight_decay=0.0,
               step_size_controller=True, step_size_multiplier=5.0,
               step_size_aggregation=aggregation)
    theta = opt.init(jax.random.PRNGKey(3))
    s0 = opt.init_state(theta, params)
    d, _ = opt.deltas(theta, s0, grads[0], params)
    base = STAR(step_multiplier=0.0, weight_decay=0.0)
    d_base, _ = base.deltas(base.init(KEY), s0, grads[0], params)
    for a, b in zip(jax.tree.leaves(d), jax.tree.leaves(d_base), strict=True):
        ratio = np.asarray(a / b).ravel()
        if ratio.size < 2:
            continue
        spread = ratio.max() / ratio.min()
        if aggregation == "tensor":
            assert spread == pytest.approx(1.0, rel=1e-4)
        else:
            assert spread > 1.01


def test_ratio_preconditioning_by_hand():
    """After one step v = (1 - 0.999) g^2 (no bias correction). 'divide' scales the learned
    step by 1/sqrt(v + 1e-6), 'ratio' by sqrt(v / (v + 1e-6)): for |g| = 1e-4 (v = 1e-11) the
    first is ~1000, the second ~3.2e-3 -- checked against the unpreconditioned step."""
    params = {"w": jnp.zeros((3,))}
    g = {"w": jnp.array([1e-4, 1.0, -30.0])}
    kw = dict(nominal="none", weight_decay=0.0, output_init_scale=1.0, step_multiplier=1e-3)
    plain = STAR(**kw, precondition=False)
    theta = plain.init(jax.random.PRNGKey(5))
    s0 = plain.init_state(theta, params)
    raw, _ = plain.deltas(theta, s0, g, params)
    v = 1e-3 * np.asarray(g["w"], np.float64) ** 2
    cases = (
        ("divide", 1e-6, 1 / np.sqrt(v + 1e-6)),
        ("ratio", 1e-6, np.sqrt(v / (v + 1e-6))),
        ("ratio", 1e-12, np.sqrt(v / (v + 1e-12))),  # ~0.95 at |g| = 1e-4
    )
    for mode, eps, factor in cases:
        opt = STAR(**kw, precondition=True, precondition_mode=mode, precondition_epsilon=eps)
        d, _ = opt.deltas(theta, opt.init_state(theta, params), g, params)
        np.testing.assert_allclose(d["w"], np.asarray(raw["w"]) * factor, rtol=1e-4)


def test_step_size_controller_bound_is_checked_against_weight_decay():
    with pytest.raises(ValueError, match="weight decay factor"):
        STAR(step_size_controller=True, alpha=0.1, weight_decay=0.5)
    STAR(step_size_controller=True, alpha=1e-3, weight_decay=0.5)


def test_num_outputs_follow_controllers():
    assert STAR().num_outputs == 2
    assert STAR(nominal_controller=True, regularization_controller=True).num_outputs == 4
    assert STAR(step_size_controller=True, nominal_controller=True).num_outputs == 4
    theta = STAR(nominal_controller=True).init(KEY)
    assert theta["mlp"]["w2"].shape == (4, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(nominal="rmsprop"), "nominal"),
        (dict(decay_mode="exp"), "decay_mode"),
        (dict(precondition_mode="sqrt"), "precondition_mode"),
        (dict(alpha=-1.0), "alpha"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(weight_decay=1.0, decay_mode="raw"), "zeroed"),
        (dict(step_multiplier=-1e-4), "step_multiplier"),
        (dict(hidden_sizes=(4, 0)), "hidden_sizes"),
        (dict(nominal_controller_aggregation="layer"), "aggregation"),
        (dict(step_scale=0.0), "step_scale"),
        (dict(step_scale=-0.5), "step_scale"),
        (dict(step_scale=float("nan")), "step_scale"),
        (dict(step_scale=float("inf")), "step_scale"),
        (dict(weight_decay=0.4, decay_mode="raw", step_scale=3.0), "zeroed"),
    ],
)
def test_bad_switches_fail_with_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STAR(**kwargs)


def adam_aggmo_by_hand(loss_fn, params, steps, alpha):
    m = np.zeros((3,) + params.shape)
    v = np.zeros(params.shape)
    p = np.array(params, np.float64)
    losses = []
    grad = jax.jit(jax.grad(loss_fn))
    loss_fn = jax.jit(loss_fn)
    for _ in range(steps):
        g = np.asarray(grad(jnp.asarray(p, jnp.float32)), np.float64)
        for i, b in enumerate((0.9, 0.99, 0.999)):
            m[i] = b * m[i] + (1 - b) * g
        v = 0.999 * v + 0.001 * g * g
        p = p - alpha * m.mean(0) / np.sqrt(v + ADAM_EPS)
        losses.append(float(loss_fn(jnp.asarray(p, jnp.float32))))
    return np.array(losses)


def test_meta_init_star_trains_like_adam_aggmo():
    """At meta-initialization STAR is a sound Adam-AggMo optimizer (within 10% on loss)."""
    kx, kw, kn = jax.random.split(jax.random.PRNGKey(7), 3)
    x = jax.random.normal(kx, (64, 8))
    w_true = jax.random.normal(kw, (8,))
    y = x @ w_true + 0.1 * jax.random.normal(kn, (64,))
    loss_fn = lambda w: jnp.mean((x @ w - y) ** 2)
    w0 = jnp.zeros((8,))
    steps, alpha = 1000, 1e-3
    ref = adam_aggmo_by_hand(loss_fn, w0, steps, alpha)

    opt = STAR()  # defaults: alpha 1e-3, learned term 1e-4 preconditioned, weight decay 0.1
    assert opt.alpha == alpha
    theta = opt.init(KEY)
    state = opt.init_state(theta, w0)

    @jax.jit
    def step(w, state):
        loss, g = jax.value_and_grad(loss_fn)(w)
        w, state = opt.update(theta, state, g, w, loss=loss)
        return w, state

    w, losses = w0, []
    for _ in range(steps):
        w, state = step(w, state)
        losses.append(float(loss_fn(w)))
    losses = np.array(losses)
    assert losses[-1] < 0.05 * float(loss_fn(w0))
    for t in (9, 49, 99, 299, 999):
        assert abs(losses[t] - ref[t]) <= 0.1 * ref[t], (t, losses[t], ref[t])


def test_star_learned_term_starts_small():
    """STAR's output layer starts at 1% of the spec init (the blackbox keeps the spec's)."""
    bb, star = Blackbox().init(KEY), STAR().init(KEY)
    np.testing.assert_allclose(star["mlp"]["w2"], 0.01 * bb["mlp"]["w2"], rtol=1e-6)
    np.testing.assert_array_equal(star["mlp"]["w0"], bb["mlp"]["w0"])
    assert STAR(output_init_scale=1.0).init(KEY)["mlp"]["w2"].tolist() == bb["mlp"]["w2"].tolist()
    with pytest.raises(ValueError, match="output_init_scale"):
        STAR(output_init_scale=-1.0)


def _theta_reading_gradient(opt, out_index, c):
    """Meta-parameters whose output ``out_index`` is ``c * relu(g / rms(g))`` and every other
    output is 0: one path g -> hidden 0 -> hidden 0 -> output, all other weights zero."""
    theta = jax.tree.map(jnp.zeros_like, opt.init(KEY))
    mlp = dict(theta["mlp"])
    mlp["w0"] = mlp["w0"].at[0, 0].set(1.0)  # input 0 is the gradient feature
    mlp["w1"] = mlp["w1"].at[0, 0].set(1.0)
    mlp["w2"] = mlp["w2"].at[0, out_index].set(c)
    return {**theta, "mlp": mlp}


@pytest.mark.parametrize("aggregation", ["coordinate", "tensor"])
@pytest.mark.parametrize("controller", ["nominal", "regularization"])
def test_controller_output_varying_per_coordinate_by_hand(controller, aggregation):
    """A controller output that differs between coordinates: per coordinate it scales each
    coordinate's step by its own ``exp(lambda n_i)``, per tensor by ``exp(lambda mean(n))``."""
    lam, c = 0.8, 1.5
    base = dict(step_multiplier=0.0, **{f"{controller}_controller": True,
                                        f"{controller}_controller_multiplier": lam,
                                        f"{controller}_controller_aggregation": aggregation})
    if controller == "nominal":
        opt = STAR(nominal="sgd", alpha=0.1, weight_decay=0.0, **base)
    else:
        opt = STAR(nominal="none", weight_decay=0.2, decay_mode="raw", **base)
    theta = _theta_reading_gradient(opt, 2, c)
    g = jnp.array([[0.5, -1.0, 2.0], [0.1, 0.0, 3.0]])
    p = jnp.array([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0]])
    d, _ = opt.deltas(theta, opt.init_state(theta, p), g, p)
    gn = np.asarray(g, np.float64)
    out = c * np.maximum(gn / np.sqrt(np.mean(gn**2) + 1e-5), 0.0)  # varies per coordinate
    scale = np.exp(lam * (out.mean() if aggregation == "tensor" else out))
    expected = -0.1 * scale * gn if controller == "nominal" else -0.2 * scale * np.asarray(p)
    np.testing.assert_allclose(d, expected, rtol=1e-5)
    assert np.ptp(out) > 1.0  # the output really differs between coordinates
