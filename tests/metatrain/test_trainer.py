"""Outer loop: files, resume equality, Ctrl-C checkpoints, best-theta selection."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import QuadraticFamily
from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.trainer import MetaTrainer

BASE = dict(
    optimizer="star",
    tasks="quadratic",
    estimator="pes",
    sigma=0.01,
    truncation=4,
    horizon_min=8,
    horizon_max=16,
    num_slots=8,
    outer_lr=0.05,
    outer_steps=6,
    eval_every=2,
    eval_tasks=4,
    eval_horizon=12,
    checkpoint_every=2,
    seed=3,
)


def save_npz(path, theta, metadata):
    np.savez(str(path) + ".npz", **{k: np.asarray(v) for k, v in theta.items()})
    path.with_suffix(".json").write_text(json.dumps(metadata))


def trainer(tmp_path, lo, fam, name, **kw):
    cfg = MetaTrainConfig(**{**BASE, **kw})
    return MetaTrainer(cfg, tmp_path / name, optimizer=lo, task=fam, save_theta=save_npz)


def read_metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def same_metrics(a, b):
    assert [r["outer_step"] for r in a] == [r["outer_step"] for r in b]
    for key in ("meta_loss", "grad_norm", "nonfinite_pairs", "eval_loss", "finished_runs"):
        np.testing.assert_allclose(
            [r.get(key, np.nan) for r in a], [r.get(key, np.nan) for r in b], rtol=1e-6
        )


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, momentum_lo, quad_family):
    full = trainer(tmp_path, momentum_lo, quad_family, "full").run()

    def interrupt(step, record):
        if step == 3:  # a real Ctrl-C: the handler lets the step finish, then checkpoints
            os.kill(os.getpid(), signal.SIGINT)

    # interrupted at step 3 (between checkpoints), resumed with a larger outer_steps
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path, momentum_lo, quad_family, "cut", outer_steps=4).run(callback=interrupt)
    meta = read_metrics(tmp_path / "cut")
    assert [r["outer_step"] for r in meta] == [1, 2, 3]
    resumed = trainer(tmp_path, momentum_lo, quad_family, "cut").run(resume=True)
    for k in full["theta"]:
        np.testing.assert_allclose(resumed["theta"][k], full["theta"][k], rtol=1e-6)
    same_metrics(read_metrics(tmp_path / "cut"), read_metrics(tmp_path / "full"))
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["resumed_at"] == [3]
    assert full["best"] == resumed["best"]


def test_outputs_and_learning(tmp_path, momentum_lo, quad_family):
    t = trainer(tmp_path, momentum_lo, quad_family, "run", outer_steps=20, eval_every=5)
    out = t.run()
    d = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "checkpoint.safetensors"):
        assert (d / name).exists(), name
    assert (d / "best.safetensors.npz").exists() and (d / "theta.safetensors.npz").exists()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["inner_steps_per_outer_step"] == 8 * 4 * 2
    assert "versions" in cfg["environment"]
    rows = read_metrics(d)
    assert len(rows) == 20
    for r in rows:
        assert {"outer_step", "meta_loss", "grad_norm", "nonfinite_pairs",
                "inner_steps_per_s"} <= set(r)
    evals = [json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()]
    assert [e["outer_step"] for e in evals] == [0, 5, 10, 15, 20]
    # lr exp(-2) with momentum is slow on this quadratic: meta-training must speed it up
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert out["best"]["eval_loss"] == min(e["eval_loss"] for e in evals)
    # best.safetensors holds the theta that scored the best evaluation: evaluating it again
    # (same fixed tasks and keys) gives exactly that score; theta.safetensors is the final theta
    assert out["best"]["outer_step"] > 0
    best = dict(np.load(d / "best.safetensors.npz"))
    assert t.evaluate(best)["eval_loss"] == pytest.approx(out["best"]["eval_loss"], rel=1e-6)
    final = dict(np.load(d / "theta.safetensors.npz"))
    for k in out["theta"]:
        np.testing.assert_array_equal(final[k], np.asarray(out["theta"][k]))
    # running again without --resume refuses to overwrite
    with pytest.raises(FileExistsError):
        trainer(tmp_path, momentum_lo, quad_family, "run").run()


def test_held_out_tasks_drawn_at_initialization_equal_those_drawn_alone(
    tmp_path, momentum_lo, quad_family
):
    """The initialization draws the held-out tasks with the slots' own; a trainer that never
    initialized (evaluation only) draws them alone: the evaluation must not tell them apart."""
    t = trainer(tmp_path, momentum_lo, quad_family, "a")
    theta = t.init_state()["theta"]
    with_init = t.evaluate(theta)
    alone = trainer(tmp_path, momentum_lo, quad_family, "b", seed=BASE["seed"])
    assert alone.evaluate(theta) == with_init
    other_seed = trainer(tmp_path, momentum_lo, quad_family, "c", seed=BASE["seed"] + 1)
    assert other_seed.evaluate(theta) != with_init  # other tasks: the comparison can fail


def test_held_out_tasks_from_another_family_are_that_familys_own(
    tmp_path, momentum_lo, quad_family
):
    """``eval_on``: the held-out draws of another family are exactly those a run meta-trained
    on that family evaluates on (same seed), not the training family's; a run with them
    keeps its best theta by them."""
    other = QuadraticFamily(name="wide_quadratic", dim=7, noise=0.3)
    t = MetaTrainer(MetaTrainConfig(**{**BASE, "eval_on": other.name}), tmp_path / "a",
                    optimizer=momentum_lo, task=quad_family, eval_task=other,
                    save_theta=save_npz)
    theta = t.init_state()["theta"]
    on_other = t.evaluate(theta)
    assert on_other == trainer(tmp_path, momentum_lo, other, "b").evaluate(theta)
    assert on_other != trainer(tmp_path, momentum_lo, quad_family, "c").evaluate(theta)
    out = MetaTrainer(MetaTrainConfig(**{**BASE, "eval_on": other.name}), tmp_path / "d",
                      optimizer=momentum_lo, task=quad_family, eval_task=other,
                      save_theta=save_npz).run()
    recorded = json.loads((tmp_path / "d" / "config.json").read_text())
    assert recorded["eval_groups"] == ["wide_quadratic"] != recorded["groups"]
    assert recorded["eval_tasks_per_group"] == [BASE["eval_tasks"]]
    with pytest.raises(ValueError, match="needs config.eval_on"):
        MetaTrainer(MetaTrainConfig(**BASE), tmp_path / "f", optimizer=momentum_lo,
                    task=quad_family, eval_task=other)
    best = dict(np.load(tmp_path / "d" / "best.safetensors.npz"))
    assert trainer(tmp_path, momentum_lo, other, "e").evaluate(best)["eval_loss"] == (
        pytest.approx(out["best"]["eval_loss"], rel=1e-6)
    )


def test_resume_of_finished_run_is_a_noop(tmp_path, momentum_lo, quad_family):
    first = trainer(tmp_path, momentum_lo, quad_family, "r", outer_steps=2).run()
    (tmp_path / "r" / "config.json").unlink()  # a lost config.json still records the resume
    again = trainer(tmp_path, momentum_lo, quad_family, "r", outer_steps=2).run(resume=True)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["resumed_at"] == [2]
    for k in first["theta"]:
        np.testing.assert_array_equal(np.asarray(first["theta"][k]), np.asarray(again["theta"][k]))
    assert len(read_metrics(tmp_path / "r")) == 2


def test_resume_rejects_changed_config(tmp_path, momentum_lo, quad_family):
    trainer(tmp_path, momentum_lo, quad_family, "r", outer_steps=2).run()
    with pytest.raises(ValueError, match="sigma"):
        trainer(tmp_path, momentum_lo, quad_family, "r", sigma=0.02).run(resume=True)


def test_tbptt_and_es_run(tmp_path, momentum_lo, quad_family):
    for est in ("tbptt", "es"):
        out = trainer(tmp_path, momentum_lo, quad_family, est, estimator=est, eval_every=0,
                      outer_steps=2).run()
        assert all(np.isfinite(np.asarray(v)) for v in jax.tree.leaves(out["theta"]))


def test_exception_in_callback_checkpoints(tmp_path, momentum_lo, quad_family):
    def boom(step, record):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path, momentum_lo, quad_family, "k").run(callback=boom)
    from lopt.metatrain.checkpoint import load_checkpoint

    t = trainer(tmp_path, momentum_lo, quad_family, "k")
    _, meta = load_checkpoint(tmp_path / "k" / "checkpoint.safetensors",
                              {**t.init_state(), "key": t.key_loop})
    assert meta["outer_step"] == 1


class PoisonedEstimator:
    """Wraps a real estimator; every estimate it returns is replaced by ``grad`` with
    ``valid_pairs`` valid pairs (everything else delegates to the real one)."""

    def __init__(self, inner, grad: float, valid_pairs: int):
        self.inner, self.grad, self.valid_pairs = inner, grad, valid_pairs

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, theta, est_state, key):
        g, est_state, diag = self.inner.step(theta, est_state, key)
        g = jax.tree.map(lambda x: jnp.full_like(x, self.grad), g)
        return g, est_state, dict(diag, valid_pairs=jnp.int32(self.valid_pairs))


@pytest.mark.parametrize(
    "grad,valid_pairs", [(np.nan, 8), (0.5, 0)], ids=["non-finite", "no-valid-pair"]
)
def test_non_finite_or_empty_estimates_never_move_theta(tmp_path, momentum_lo, quad_family,
                                                        grad, valid_pairs):
    """A non-finite estimate, or one backed by no valid pair, is skipped and flagged: theta
    and the outer Adam state (its step count too) stay exactly at their initial values."""
    t = trainer(tmp_path, momentum_lo, quad_family, "p", outer_steps=3, eval_every=0)
    t.estimator = PoisonedEstimator(t.estimator, grad, valid_pairs)
    out = t.run()
    init = t.init_state()
    for k in init["theta"]:
        np.testing.assert_array_equal(np.asarray(out["theta"][k]), np.asarray(init["theta"][k]))
    assert [r["skipped_update"] for r in read_metrics(tmp_path / "p")] == [True] * 3
    from lopt.metatrain.checkpoint import load_checkpoint

    saved, _ = load_checkpoint(tmp_path / "p" / "checkpoint.safetensors",
                               {**init, "key": t.key_loop})
    jax.tree.map(np.testing.assert_array_equal, saved["opt_state"], init["opt_state"])
