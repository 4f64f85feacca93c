"""The torch contract of lopt.torch.STAR / Blackbox: groups, closures, skipping, state dicts,
non-finite gradients, clear errors. The JAX update is the oracle where one is needed."""

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
# One intra-op thread: the suite already runs a process per core, and torch's pool on a busy
# 2-core machine made small ops ~30x slower (100 digits steps: 12 s with 2 threads, 0.37 s).
torch.set_num_threads(1)

import lopt.torch  # noqa: E402
import lopt.torch.meta  # noqa: E402
from lopt.optimizers import STAR, Blackbox, save_meta_params  # noqa: E402
from lopt.torch.switches import UnsupportedConfigError, check_supported  # noqa: E402


def random_theta(opt, seed=0):
    full = type(opt)(**{**opt.config(), "output_init_scale": 1.0})
    return full.init(jax.random.PRNGKey(seed))


def make_params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def grads_for(params, step, scale=1.0):
    gen = torch.Generator().manual_seed(1000 + step)
    return [scale * torch.randn(p.shape, generator=gen) for p in params]


def run_steps(opt, params, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(params, grads_for(params, t), strict=True):
            p.grad = g
        opt.step()


def clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def test_closure_is_called_and_its_loss_returned():
    params = make_params([(4, 3)])
    target = torch.ones(4, 3)
    opt = lopt.torch.STAR(params)
    calls = []

    def closure():
        opt.zero_grad()
        loss = ((params[0] - target) ** 2).sum()
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = opt.step(closure)
    assert calls and loss.item() == calls[0]
    # the same step without a closure, gradient computed outside, gives the same parameters
    other = clone(make_params([(4, 3)]))
    opt2 = lopt.torch.STAR(other)
    ((other[0] - target) ** 2).sum().backward()
    assert opt2.step() is None
    torch.testing.assert_close(params[0], other[0], rtol=0, atol=0)
    opt.zero_grad()
    assert params[0].grad is None


def test_group_switches_equal_separate_optimizers_and_matter():
    w, b = make_params([(6, 4), (4,)], seed=1)
    grouped = lopt.torch.STAR(
        [{"params": [w]}, {"params": [b], "weight_decay": 0.0, "alpha": 3e-3}],
        theta=random_theta(STAR()),
    )
    w2, b2 = clone([w, b])
    sep_w = lopt.torch.STAR([w2], theta=random_theta(STAR()))
    sep_b = lopt.torch.STAR([b2], theta=random_theta(STAR()), weight_decay=0.0, alpha=3e-3)
    w3, b3 = clone([w, b])
    plain = lopt.torch.STAR([w3, b3], theta=random_theta(STAR()))
    for t in range(5):
        gw, gb = grads_for([w, b], t)
        for p, g in ((w, gw), (b, gb), (w2, gw), (b2, gb), (w3, gw), (b3, gb)):
            p.grad = g.clone()
        for o in (grouped, sep_w, sep_b, plain):
            o.step()
    torch.testing.assert_close(w, w2, rtol=0, atol=0)
    torch.testing.assert_close(b, b2, rtol=0, atol=0)
    torch.testing.assert_close(w, w3, rtol=0, atol=0)
    assert (b - b3).abs().max() > 1e-3  # the group's switches changed its update
    assert grouped.param_groups[1]["weight_decay"] == 0.0
    assert grouped.param_groups[0]["weight_decay"] == STAR().weight_decay


def test_bad_groups_and_options_are_clear_errors():
    (w,) = make_params([(3, 2)])
    with pytest.raises(ValueError, match="architecture"):
        lopt.torch.STAR([{"params": [w], "hidden_sizes": (8,)}])
    with pytest.raises(ValueError, match="unknown key 'weight_decy'"):
        lopt.torch.STAR([{"params": [w], "weight_decy": 0.0}])
    with pytest.raises(ValueError, match="nominal"):
        lopt.torch.STAR([{"params": [w], "nominal": "lion"}])
    with pytest.raises(TypeError, match="valid options"):
        lopt.torch.STAR([w], weight_decy=0.0)
    with pytest.raises(ValueError, match="max_nonfinite_skips"):
        lopt.torch.STAR([w], max_nonfinite_skips=-1)
    with pytest.raises(ValueError, match="weight_decay"):  # blackbox has no such switch
        lopt.torch.Blackbox([{"params": [w], "weight_decay": 0.0}])
    with pytest.raises(TypeError, match="complex"):
        lopt.torch.STAR([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])


def test_unknown_config_key_is_refused_not_ignored(monkeypatch):
    """A switch the JAX STAR gains before the torch front-end implements it must fail loudly."""

    @dataclasses.dataclass(frozen=True)
    class NewSTAR(STAR):
        future_switch: bool = False

    monkeypatch.setattr(
        lopt.torch.meta, "optimizer_classes", lambda: {"star": NewSTAR, "blackbox": Blackbox}
    )
    (w,) = make_params([(3, 2)])
    with pytest.raises(UnsupportedConfigError, match="future_switch"):
        lopt.torch.STAR([w], theta=NewSTAR().init(jax.random.PRNGKey(0)))
    with pytest.raises(UnsupportedConfigError, match="accumulators.new_decay"):
        check_supported("star", {**STAR().config(), "accumulators": {"new_decay": 0.5}})
    # a JAX switch torch does not implement yet is accepted at its "off" value, refused on
    monkeypatch.setitem(lopt.torch.switches.OFF_ONLY, "star", {"future_switch": False})
    check_supported("star", {**STAR().config(), "future_switch": False})
    with pytest.raises(UnsupportedConfigError, match="future_switch=True"):
        check_supported("star", {**STAR().config(), "future_switch": True})


def test_params_without_grad_are_skipped():
    a, b, frozen = make_params([(5, 3), (3,), (2, 2)], seed=2)
    before = frozen.detach().clone()
    opt = lopt.torch.STAR([a, frozen, b])
    a2, b2 = clone([a, b])
    ref = lopt.torch.STAR([a2, b2])
    for t in range(4):
        ga, gb = grads_for([a, b], t)
        a.grad, b.grad, a2.grad, b2.grad = ga, gb, ga.clone(), gb.clone()
        opt.step()
        ref.step()
    assert torch.equal(frozen, before) and frozen not in opt.state
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    torch.testing.assert_close(b, b2, rtol=0, atol=0)
    # a parameter that gets gradients later starts its own step count at 0
    frozen.grad = torch.ones(2, 2)
    opt.step()
    assert int(opt.state[frozen]["step"]) == 1 and int(opt.state[a]["step"]) == 5


def test_empty_parameters_are_skipped():
    empty, w = torch.nn.Parameter(torch.zeros(0, 3)), torch.nn.Parameter(torch.ones(2, 3))
    opt = lopt.torch.STAR([empty, w])
    empty.grad, w.grad = torch.zeros(0, 3), torch.ones(2, 3)
    opt.step()
    assert empty not in opt.state and int(opt.state[w]["step"]) == 1


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = lopt.torch.STAR(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_any_rank_matches_jax():
    """Ranks 3 and 5 (the 200-step parity test covers 0, 1, 2 and 4)."""
    shapes = [(2, 3, 4), (2, 1, 3, 2, 5)]
    opt = STAR(step_multiplier=1e-3)
    theta = random_theta(opt)
    params = make_params(shapes, seed=3)
    jparams = [jnp.asarray(p.detach().numpy()) for p in params]
    state = opt.init_state(theta, jparams)
    topt = lopt.torch.STAR(params, theta=theta, **opt.config())
    update = jax.jit(opt.update)
    for t in range(5):
        grads = grads_for(params, t)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        topt.step()
        jparams, state = update(theta, state, [jnp.asarray(g.numpy()) for g in grads], jparams)
    for p, q in zip(params, jparams, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), np.asarray(q), rtol=1e-5, atol=1e-6)


def test_nonfinite_steps_skip_count_then_surface_like_optax():
    """Same sequence through optax's front-end (apply_if_finite) and torch: same outcome."""
    opt = STAR()
    theta = random_theta(opt)
    tx = opt.as_optax(theta, max_nonfinite_skips=2)
    tx_update = jax.jit(tx.update)
    (w,) = make_params([(3, 2)])
    jw = {"w": jnp.asarray(w.detach().numpy())}
    jstate = tx.init(jw)
    topt = lopt.torch.STAR([w], theta=theta, max_nonfinite_skips=2)
    good = torch.full((3, 2), 0.1)
    bad = torch.tensor([[1.0, float("nan")], [0.0, 0.0], [float("inf"), 0.0]])
    neg_inf = torch.tensor([[1.0, 0.0], [-float("inf"), 0.0], [0.0, 0.0]])
    sequence = [good, bad, good, neg_inf, bad, bad, good]
    counts = []
    for t, g in enumerate(sequence):
        before = {k: v.clone() for k, v in topt.state[w].items()} if topt.state[w] else None
        w_before = w.detach().clone()
        w.grad = g.clone()
        topt.step()
        u, jstate = tx_update({"w": jnp.asarray(g.numpy())}, jstate, jw)
        jw = optax.apply_updates(jw, u)
        np.testing.assert_allclose(
            w.detach().numpy(), np.asarray(jw["w"]), rtol=1e-6, atol=1e-7, equal_nan=True
        )
        assert topt.notfinite_count == int(jstate.notfinite_count)
        assert topt.total_notfinite == int(jstate.total_notfinite)
        assert topt.last_finite == bool(jstate.last_finite)
        counts.append(topt.notfinite_count)
        if t in (1, 3, 4):  # skipped: parameters and accumulators untouched
            assert torch.equal(w.detach(), w_before)
            for k, v in before.items():
                assert torch.equal(topt.state[w][k], v), k
    assert counts == [0, 1, 0, 1, 2, 3, 0]
    assert not torch.isfinite(w).all()  # the third consecutive bad step was let through


def _train(opt, params, steps, start=0):
    run_steps(opt, params, steps, start)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    "cls,switches",
    [(lopt.torch.STAR, {}), (lopt.torch.Blackbox, {}),
     (lopt.torch.STAR, {"distance_feature": True})],
    ids=["star", "blackbox", "star-distance"],
)
def test_state_dict_round_trip_continues_identically(cls, switches):
    shapes = [(), (5,), (6, 4), (3, 3, 2, 2)]
    kind = STAR if cls is lopt.torch.STAR else Blackbox
    # not the meta-init that `fresh` below starts from
    theta = random_theta(kind(**switches), seed=7)
    params = make_params(shapes, seed=4)
    opt = cls(params, theta=theta, max_nonfinite_skips=3, **switches)
    run_steps(opt, params, 6)
    params[1].grad = torch.full((5,), float("nan"))  # a skipped step: the counter is state too
    for p in (params[0], params[2], params[3]):
        p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.notfinite_count == 1
    if cls is lopt.torch.STAR:
        opt.param_groups[0]["weight_decay"] = 0.3
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    uninterrupted = _train(opt, params, 6, start=6)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain tensors and Python values, no pickles
    resumed_params = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    fresh = cls(resumed_params)  # shipped/meta-init theta: the state dict brings the real one
    fresh.load_state_dict(saved["opt"])
    assert fresh.notfinite_count == 1 and fresh.total_notfinite == 1
    if switches:  # the estimate moved, and comes back with its step count
        assert opt.distance["d"] > 1e-6 and fresh.distance == saved["opt"]["lopt"]["distance"]
    resumed = _train(fresh, resumed_params, 6, start=6)
    for a, b in zip(uninterrupted, resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="state dict"):
        other = lopt.torch.Blackbox if cls is lopt.torch.STAR else lopt.torch.STAR
        other(make_params(shapes)).load_state_dict(saved["opt"])


def test_no_guard_lets_nonfinite_gradients_through_and_survives_a_state_dict():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = lopt.torch.STAR([w], max_nonfinite_skips=None)
    w.grad = torch.full((3, 2), float("nan"))
    opt.step()
    assert torch.isnan(w).all() and opt.notfinite_count == 0  # not skipped, not counted
    fresh = lopt.torch.STAR([torch.nn.Parameter(torch.ones(3, 2))])
    fresh.load_state_dict(opt.state_dict())
    assert fresh.max_nonfinite_skips is None


def test_low_precision_params_keep_float32_state_through_a_state_dict():
    (w,) = [torch.nn.Parameter(torch.randn(4, 3).to(torch.bfloat16))]
    opt = lopt.torch.STAR([w])
    w.grad = torch.randn(4, 3).to(torch.bfloat16)
    opt.step()
    assert w.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for k, v in opt.state[w].items() if k != "step")
    fresh = lopt.torch.STAR([w])
    fresh.load_state_dict(opt.state_dict())
    assert all(v.dtype == torch.float32 for k, v in fresh.state[w].items() if k != "step")
    torch.testing.assert_close(fresh.state[w]["m"], opt.state[w]["m"], rtol=0, atol=0)


def test_meta_parameter_files_are_read_by_the_shared_loader(tmp_path):
    opt = STAR(weight_decay=0.5, hidden_sizes=(8,))
    theta = random_theta(opt)
    path = save_meta_params(tmp_path / "theta.safetensors", theta, opt)
    (w,) = make_params([(3, 2)])
    topt = lopt.torch.STAR([w], theta=path, weight_decay=0.2)  # a group switch may change
    assert topt.optimizer_config.hidden_sizes == (8,)
    assert topt.param_groups[0]["weight_decay"] == 0.2
    torch.testing.assert_close(topt.theta["mlp/w0"], torch.tensor(np.asarray(theta["mlp"]["w0"])))
    with pytest.raises(ValueError, match="architecture"):
        lopt.torch.STAR([w], theta=path, hidden_sizes=(4, 4))
    with pytest.raises(ValueError, match="not blackbox"):
        lopt.torch.Blackbox([w], theta=path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    shapes = [(), (7,), (12, 5), (3, 3, 4, 6)]
    theta = random_theta(STAR())
    cpu = make_params(shapes, seed=5)
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    o_cpu, o_gpu = lopt.torch.STAR(cpu, theta=theta), lopt.torch.STAR(gpu, theta=theta)
    for t in range(20):
        for a, b, g in zip(cpu, gpu, grads_for(cpu, t), strict=True):
            a.grad, b.grad = g, g.cuda()
        o_cpu.step()
        o_gpu.step()
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)
