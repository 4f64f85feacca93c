"""``lopt meta-train`` in-process: outputs, resume, and usage errors (exit code 2)."""

from __future__ import annotations

import json

import pytest

import lopt
from lopt.cli.main import main

SMALL = [
    "--tasks", "quadratic_family", "--estimator", "pes", "--truncation", "5",
    "--horizon-min", "10", "--horizon-max", "20", "--slots", "2", "--eval-every", "2",
    "--eval-tasks", "2", "--eval-horizon", "10", "--checkpoint-every", "2", "--seed", "1",
    "--no-progress", "--opt", "hidden_sizes=[2]",
]


@pytest.mark.slow
def test_meta_train_smoke_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    # held out on another registered task (`--eval-on`): resolved by name, kept on resume
    assert main(["meta-train", "--optimizer", "star", "--outer-steps", "2", "--out", str(out),
                 "--eval-on", "quadratic", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outer_step"] == 2
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "checkpoint.safetensors",
                 "best.safetensors", "theta.safetensors"):
        assert (out / name).exists(), name
    theta, opt = lopt.load_meta_params(out / "theta.safetensors")
    assert opt.name == "star" and opt.hidden_sizes == (2,)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["optimizer_kwargs"] == {"hidden_sizes": [2]}
    assert cfg["config"]["eval_on"] == "quadratic"
    # continue the same run to 3 steps (JAX already runs here: --cpu-devices is reported ignored)
    assert main(["meta-train", "--optimizer", "star", "--outer-steps", "3", "--out", str(out),
                 "--resume", "--cpu-devices", "2", "--eval-on", "quadratic", *SMALL]) == 0
    assert "--cpu-devices ignored" in capsys.readouterr().out
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["outer_step"] for r in rows] == [1, 2, 3]
    # the trained theta is usable by `lopt train`
    assert main(["train", "--optimizer", str(out / "theta.safetensors"), "--task", "quadratic",
                 "--steps", "5", "--out", str(tmp_path / "train")]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sigma", "-1"], "sigma must be > 0"),
        (["--truncation", "50"], "truncation \\(50\\) is longer"),
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--eval-on", "nope"], "unknown task 'nope' \\(eval_on\\); choose one of"),
        (["--opt", "bogus=1"], "bad optimizer_kwargs for star"),
        (["--config", "/nonexistent.toml"], "config file not found"),
        (["--cpu-devices", "-1"], "--cpu-devices must be >= 0"),
    ],
)
def test_meta_train_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["meta-train", "--optimizer", "star", "--outer-steps", "1",
              "--out", str(tmp_path / "x"), *SMALL, *argv])
    assert exc.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_distance_feature_meta_training_resumes_exactly(tmp_path, capsys):
    """The distance estimate's state (d, sums, the initial parameters) lives in the PES
    checkpoint: 2 steps + resume to 4 equal 4 steps in one go."""
    import jax
    import numpy as np

    args = ["meta-train", "--optimizer", "star", "--opt", "distance_feature=true", *SMALL]
    assert main([*args, "--outer-steps", "4", "--out", str(tmp_path / "full")]) == 0
    assert main([*args, "--outer-steps", "2", "--out", str(tmp_path / "cut")]) == 0
    assert main([*args, "--outer-steps", "4", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    full, opt = lopt.load_meta_params(tmp_path / "full" / "theta.safetensors")
    cut, _ = lopt.load_meta_params(tmp_path / "cut" / "theta.safetensors")
    assert opt.distance_feature
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(cut), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
