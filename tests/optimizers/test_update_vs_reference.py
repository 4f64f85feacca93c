"""The fused JAX update of Blackbox and STAR equals an independent NumPy reference.

``tests/reference/adafactor_mlp_reference.py`` restates method.md section 3 (plus this
codebase's documented deviations) in plain float64 NumPy, building the ``[num_params, 39]``
input matrix explicitly; it shares no code with ``lopt.optimizers``. Meta-parameters are random
at full output scale (the learned term is large) and the switch-dependent multipliers are large
enough that every MLP output moves the step by far more than the tolerance.

Switches: ``SWITCHES`` is the table of every STAR switch and its values. The end-to-end test
(50 steps, 5 tensor shapes, compiled once per config, ~3 s each) runs a pairwise-covering set of
its combinations -- every pair of values of any two switches appears in some config -- plus the
product defaults; the full product of the switches that decide how outputs become a step (2916
combinations) is checked for that part of the update (``leaf_delta``: MLP outputs and
accumulators -> step), which needs no compile. ``INPUT_SWITCHES`` only change what the MLP reads
(not ``leaf_delta``), so they are covered end to end, paired with every value of every other
switch.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt.optimizers import STAR, Blackbox
from lopt.optimizers.features import LeafState
from reference.adafactor_mlp_reference import CONFIG_KEYS, ReferenceOptimizer

STEPS = 50
# "kernel": a short last axis behind a long one, computed in another axis order by the update
# (``lopt.optimizers.features.compute_layout``; the reference knows nothing of it).
SHAPES = {"scalar": (), "vector": (7,), "matrix": (5, 3), "conv": (3, 3, 2, 4), "kernel": (18, 5)}
# Gradient scale per tensor: 1e-3 puts v near the 1e-6 epsilon; 10 is far above it.
GRAD_SCALES = {"scalar": 1e-3, "vector": 1.0, "matrix": 10.0, "conv": 1e-2, "kernel": 0.1}

#: Every STAR switch and the values it takes. A new switch must be added here (and to the
#: reference): ``test_switch_table_lists_every_switch`` and the reference's unknown-key check
#: fail until it is.
SWITCHES = {
    "nominal": ("sgd", "sgdm", "aggmo", "adam", "adam_aggmo", "none"),
    "precondition": ("divide", "ratio", "off"),
    "weight_decay": ("off", "scaled", "raw"),  # sets weight_decay and decay_mode together
    "nominal_controller": ("off", "coordinate", "tensor"),
    "regularization_controller": ("off", "coordinate", "tensor"),
    "step_size_controller": ("off", "coordinate", "tensor"),
    "learned_term": (True, False),  # step_multiplier > 0 or == 0 ("nominal only")
    "tensor_features": (False, True),  # six tensor-level MLP inputs after the time features
    "distance_feature": (False, True),  # Prodigy's distance estimate as one more MLP input
}
#: Switches that change the MLP's inputs only: ``leaf_delta`` (outputs -> step) never sees them.
INPUT_SWITCHES = ("tensor_features", "distance_feature")

#: Multipliers large enough that every MLP output changes the step by O(1) relative amounts
#: (with the defaults 1e-3, exp(1e-3 m) ~ 1 would hide a wrong m, n or r). ``step_scale`` is
#: not 1 so that every row checks the scaled change (at 1 the update skips the multiply).
SENSITIVE = dict(magnitude_multiplier=0.5, alpha=1e-2, step_scale=0.7)
CONTROLLER_MULTIPLIER = 0.7


def star_kwargs(combo: dict) -> dict:
    """STAR constructor arguments for one row of the switch table (one place per switch)."""
    kw = dict(SENSITIVE, nominal=combo["nominal"])
    kw.update(
        {
            "divide": dict(precondition=True, precondition_mode="divide"),
            # a non-default epsilon, of the order of the tiny tensors' v, so that it matters
            "ratio": dict(precondition=True, precondition_mode="ratio", precondition_epsilon=1e-7),
            "off": dict(precondition=False),
        }[combo["precondition"]]
    )
    kw.update(
        {
            "off": dict(weight_decay=0.0),
            "scaled": dict(weight_decay=0.5, decay_mode="scaled"),
            "raw": dict(weight_decay=0.02, decay_mode="raw"),
        }[combo["weight_decay"]]
    )
    for name in ("nominal_controller", "regularization_controller"):
        if combo[name] != "off":
            kw[name] = True
            kw[f"{name}_aggregation"] = combo[name]
            kw[f"{name}_multiplier"] = CONTROLLER_MULTIPLIER
    if combo["step_size_controller"] != "off":  # its default multiplier 1 is already O(1)
        kw.update(step_size_controller=True, step_size_aggregation=combo["step_size_controller"])
    kw["step_multiplier"] = 1e-3 if combo["learned_term"] else 0.0
    kw["tensor_features"] = combo["tensor_features"]
    kw["distance_feature"] = combo["distance_feature"]
    return kw


def all_combinations() -> list[dict]:
    names = list(SWITCHES)
    return [dict(zip(names, vals, strict=True)) for vals in itertools.product(*SWITCHES.values())]


@functools.cache
def _pairwise_rows() -> tuple[int, ...]:
    names = list(SWITCHES)
    candidates = all_combinations()
    pairs = [
        frozenset(((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2))
        for row in candidates
    ]
    uncovered = set().union(*pairs)
    chosen = []
    while uncovered:
        best = max(range(len(candidates)), key=lambda i: len(pairs[i] & uncovered))
        chosen.append(best)
        uncovered -= pairs[best]
    return tuple(chosen)


def pairwise_combinations() -> list[dict]:
    """A small set of rows in which every pair of values of any two switches occurs.

    Greedy and deterministic: repeatedly take the first row of the full product that covers
    the most pairs not yet covered.
    """
    candidates = all_combinations()
    return [candidates[i] for i in _pairwise_rows()]


def combo_id(combo: dict) -> str:
    return "-".join(str(v) for v in combo.values())


# -- shared fixtures ------------------------------------------------------------------------


def random_theta(opt, seed: int):
    """Random meta-parameters with the structure of ``opt.init``: weights N(0, 1/fan_in) at
    full output scale, non-zero biases, decay offsets around 0 (decays away from the defaults)."""
    rng = np.random.default_rng(seed)
    template = jax.eval_shape(opt.init, jax.random.PRNGKey(0))  # shapes only: no compile
    mlp = {}
    for name, w in template["mlp"].items():
        if name.startswith("w"):
            mlp[name] = rng.standard_normal(w.shape) / np.sqrt(w.shape[0])
        else:
            mlp[name] = 0.3 * rng.standard_normal(w.shape)
    # offsets ~ +-0.05: 1 - beta moves by up to e^+-1.5 (3 sigma); much smaller 1 - beta would
    # be dominated by the float32 rounding of beta itself (6e-8 / (1 - beta) relative)
    decays = {k: 0.05 * rng.standard_normal(np.shape(v)) for k, v in template["decays"].items()}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {"mlp": mlp, "decays": decays})


def problem(seed: int = 0):
    """Initial parameters and ``STEPS`` gradient lists (one slice of the matrix always zero:
    a dead unit, so the 1e-30 epsilons of the factored statistics matter)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()]
    grads = []
    for _ in range(STEPS):
        gs = [
            (GRAD_SCALES[k] * rng.standard_normal(s)).astype(np.float32)
            for k, s in SHAPES.items()
        ]
        gs[2][:, 0] = 0.0
        grads.append(gs)
    return params, grads


#: A momentum is an EMA of noisy gradients: where they have averaged out to ~0, its float32
#: rounding error is still of the order of the gradients added up, not of the small result
#: (seen on a new row of the switch table: a nominal-only sgdm step of 2.0789e-8 against the
#: reference's 2.0756e-8 on the tensor with |g| ~ 10). So ``|m|`` counts at least this
#: fraction of ``|g|`` in the tolerance.
MOMENTUM_FLOOR = 1e-3


def magnitude(ref: ReferenceOptimizer, leaf: dict) -> np.ndarray:
    """Per coordinate, the largest summand of the step with every cancellation removed.

    Float32 errors are relative to the magnitudes of what is added up, not to a possibly
    cancelling sum: the summands are recomputed by the reference from absolute values (``|m_i|``
    inside the mean of the momenta, ``|g|``, ``|p|``), and the MLP output ``d`` becomes
    ``|d| + 1`` because it is itself a sum of O(1) terms whose absolute error does not shrink
    when ``d`` is small, and ``|m|`` gets the floor ``MOMENTUM_FLOOR |g|``.
    """
    shape = leaf["p"].shape
    outs = {n: leaf["outputs"][:, k].reshape(shape) for k, n in enumerate(ref.output_names())}
    outs["d"] = np.abs(outs["d"]) + 1.0
    m = np.abs(leaf["acc"]["m"]) + MOMENTUM_FLOOR * np.abs(leaf["g"])
    acc = {"m": m, "v": leaf["acc"]["v"]}
    terms = ref.terms(outs, np.abs(leaf["p"]), np.abs(leaf["g"]), acc)
    return np.max([np.abs(t) for t in terms.values()], axis=0)


#: float32 agreement, relative to ``magnitude``. Measured worst case over these tests ~1e-4,
#: mostly from the decays: beta is a float32 number, so 1 - beta ~ 5e-4 carries ~1e-4 relative
#: rounding error, and so do the accumulators and every term built from them.
RTOL = 5e-4


def assert_close_to_reference(opt, kind: str, theta, seed: int = 0, *,
                              distance_must_grow: bool = False):
    """Run the JAX update and the reference side by side for ``STEPS`` steps (each on its own
    trajectory) and compare every step's parameter change and the final accumulators.

    ``distance_must_grow``: also require Prodigy's estimate to leave its initial value, so that
    its MLP input is not a constant the comparison could not see wrong. Asked of the dedicated
    distance test only: on the pure-noise gradients here whether it grows depends on the row
    (the switch table's rows compare it step by step all the same)."""
    params, grads = problem(seed)
    ref = ReferenceOptimizer(kind, opt.config())
    theta_np = jax.tree.map(np.asarray, theta)
    r_params, r_state = list(params), ref.init_state(params)
    j_params = [jnp.asarray(p) for p in params]
    j_state = opt.init_state(theta, j_params)
    deltas = jax.jit(opt.deltas)
    drift = [np.zeros(np.shape(p)) for p in params]  # accumulated per-step tolerances
    grew = False
    for t, gs in enumerate(grads):
        j_delta, j_state = deltas(theta, j_state, [jnp.asarray(g) for g in gs], j_params)
        r_params, r_state, info = ref.step(theta_np, r_state, gs, r_params)
        for i, name in enumerate(SHAPES):
            want = info[i]["delta"]
            got = np.asarray(j_delta[i], np.float64).reshape(want.shape)
            if not np.any(want):  # the identity optimizer (no nominal, learned or decay term)
                np.testing.assert_array_equal(got, 0.0)
                continue
            err = np.abs(got - want)
            tol = RTOL * magnitude(ref, info[i])
            bad = err > tol
            drift[i] = drift[i] + tol.reshape(drift[i].shape) + 1e-7 * np.abs(r_params[i])
            assert not bad.any(), (
                f"{name} at step {t}: {bad.sum()} coordinates differ, e.g. {got[bad][:3]} "
                f"vs reference {want[bad][:3]}"
            )
        j_params = [p + d for p, d in zip(j_params, j_delta, strict=True)]
        if opt.distance_feature:  # the estimate the next step's input is made of
            d_ref = r_state["distance"]["d"]
            np.testing.assert_allclose(float(j_state.distance.d), d_ref, rtol=1e-3, err_msg=t)
            grew = grew or d_ref > 1e-6
    if distance_must_grow:
        assert grew, "the distance estimate never left d0: its input was a constant"
    for i, name in enumerate(SHAPES):
        # the two trajectories differ by at most the per-step tolerances added up
        assert np.all(np.abs(np.asarray(j_params[i]) - r_params[i]) <= drift[i]), name
        leaf, r_leaf = j_state.leaves[i], r_state["leaves"][i]
        # float32 decays: 1 - beta ~ 4e-4 is rounded to ~1e-4 relative, and so are the EMAs
        np.testing.assert_allclose(leaf.m, r_leaf["m"], rtol=1e-3, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(leaf.v, r_leaf["v"], rtol=1e-3, atol=1e-12, err_msg=name)
    assert int(j_state.step) == r_state["t"] == STEPS


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden_sizes", [(4, 4), (5,)], ids=["4x4", "5"])
def test_blackbox_update_matches_reference(hidden_sizes):
    opt = Blackbox(hidden_sizes=hidden_sizes)
    assert_close_to_reference(opt, "blackbox", random_theta(opt, 1))


def test_blackbox_with_large_magnitude_multiplier_matches_reference():
    opt = Blackbox(magnitude_multiplier=0.5, step_multiplier=1e-2)
    assert_close_to_reference(opt, "blackbox", random_theta(opt, 2), seed=1)


def test_blackbox_with_distance_feature_matches_reference():
    """Prodigy's distance estimate reaches the MLP as one input after the time features."""
    opt = Blackbox(distance_feature=True, tensor_features=True)
    assert_close_to_reference(opt, "blackbox", random_theta(opt, 6), seed=4,
                              distance_must_grow=True)


@pytest.mark.parametrize("hidden_sizes", [(4, 4), (5,)], ids=["4x4", "5"])
def test_blackbox_with_tensor_features_matches_reference(hidden_sizes):
    """The six tensor-level inputs (log RMS of the Adam ratios, cos(g, m_i)) reach the MLP:
    with random full-scale weights on them, any error in one moves the step."""
    opt = Blackbox(hidden_sizes=hidden_sizes, tensor_features=True)
    assert_close_to_reference(opt, "blackbox", random_theta(opt, 5), seed=3)


def test_default_star_matches_reference():
    """Product defaults: nominal Adam-AggMo 1e-3, preconditioned learned term 1e-4, w = 0.1."""
    opt = STAR()
    assert_close_to_reference(opt, "star", random_theta(opt, 3))


@pytest.mark.parametrize("combo", pairwise_combinations(), ids=combo_id)
def test_star_switch_combinations_match_reference(combo):
    opt = STAR(**star_kwargs(combo))
    assert_close_to_reference(opt, "star", random_theta(opt, 4), seed=2)


def test_pairwise_table_covers_every_pair_and_stays_small():
    rows = pairwise_combinations()
    names = list(SWITCHES)
    for a, b in itertools.combinations(names, 2):
        seen = {(r[a], r[b]) for r in rows}
        assert seen == set(itertools.product(SWITCHES[a], SWITCHES[b])), (a, b)
    assert len(rows) <= 25


@pytest.mark.parametrize("learned_term", [True, False])
def test_every_switch_combination_turns_outputs_into_the_reference_step(learned_term):
    """The full product of the switch table for ``leaf_delta``, the only switch-dependent part
    of the update: the reference's MLP outputs and accumulators (after 3 steps, with random
    full-scale theta) give the reference's step in every combination.

    Eager and uncompiled, so all 2916 combinations (of today's switches, ``INPUT_SWITCHES``
    held at their default: ``leaf_delta`` does not read them) take seconds, on the
    matrix (eager JAX compiles every primitive once per shape: the other shapes would double
    the time; they are covered end to end above, together with the features and the MLP). The
    outputs and accumulators do not depend on the switches, only on how many outputs there
    are, so they are computed once per count.
    """
    params, grads = problem(3)
    defaults = STAR().config()
    step_combos = [
        c for c in all_combinations() if all(c[k] == defaults[k] for k in INPUT_SWITCHES)
    ]
    combos = [c for c in step_combos if c["learned_term"] == learned_term]
    assert 2 * len(combos) == len(step_combos) >= 2916
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    runs = {}  # number of outputs -> per tensor: (reference record, JAX inputs of leaf_delta)
    for combo in combos:
        opt = STAR(**star_kwargs(combo))
        ref = ReferenceOptimizer("star", opt.config())
        if opt.num_outputs not in runs:
            theta = jax.tree.map(np.asarray, random_theta(opt, opt.num_outputs))
            state, p = ref.init_state(params), params
            for gs in grads[:3]:
                p, state, info = ref.step(theta, state, gs, p)
            leaf = info[list(SHAPES).index("matrix")]
            runs[opt.num_outputs] = leaf, (
                [f32(o.reshape(leaf["p"].shape)) for o in leaf["outputs"].T],
                f32(leaf["p"]), f32(leaf["g"]),
                LeafState(m=f32(leaf["acc"]["m"]), v=f32(leaf["acc"]["v"]),
                          row=jnp.zeros(0), col=jnp.zeros(0)),  # STAR reads m and v only
            )
        leaf, jax_inputs = runs[opt.num_outputs]
        outs = {n: leaf["outputs"][:, k].reshape(leaf["p"].shape)
                for k, n in enumerate(ref.output_names())}
        want = sum(ref.terms(outs, leaf["p"], leaf["g"], leaf["acc"]).values())
        got = np.asarray(opt.leaf_delta(*jax_inputs), np.float64)
        # same inputs on both sides: only float32 rounding of the step itself remains
        err = np.abs(got - want)
        assert np.all(err <= 1e-5 * magnitude(ref, leaf)), combo_id(combo)
    assert len(runs) >= 3  # no controller, one, both


def test_reference_refuses_unknown_switches():
    """A switch the reference does not implement must fail loudly, never be ignored."""
    with pytest.raises(KeyError, match="new_switch"):
        ReferenceOptimizer("star", {**STAR().config(), "new_switch": True})
    with pytest.raises(KeyError, match="nominal"):
        ReferenceOptimizer("blackbox", STAR().config())
    for opt, kind in ((STAR(), "star"), (Blackbox(), "blackbox")):
        assert set(opt.config()) == CONFIG_KEYS[kind]


def test_switch_table_lists_every_switch():
    """Every boolean or string field of STAR is set by some row of ``SWITCHES``."""
    covered = set().union(*(star_kwargs(c) for c in pairwise_combinations()))
    switches = {k for k, v in STAR().config().items() if isinstance(v, bool | str)}
    assert switches <= covered, switches - covered
