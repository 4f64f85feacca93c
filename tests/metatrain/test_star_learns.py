"""A short PES run lowers STAR's held-out meta-loss on the digits MLP family."""

from __future__ import annotations

import json

import pytest

from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.trainer import MetaTrainer


@pytest.mark.slow
def test_short_pes_run_improves_star_on_digits_family(tmp_path):
    cfg = MetaTrainConfig(
        optimizer="star",
        tasks="digits_mlp_family",
        truncation=20,
        horizon_min=40,
        horizon_max=200,
        num_slots=8,
        outer_lr=1e-2,
        outer_steps=20,
        eval_every=20,
        eval_tasks=4,
        eval_horizon=100,
        seed=0,
    )
    out = MetaTrainer(cfg, tmp_path).run()
    evals = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [e["outer_step"] for e in evals] == [0, 20]
    # same fixed held-out draws before and after: at least 20% lower mean loss along the run
    assert evals[-1]["eval_loss"] < 0.8 * evals[0]["eval_loss"], evals
    assert out["best"]["outer_step"] == 20
    assert (tmp_path / "best.safetensors").exists()
