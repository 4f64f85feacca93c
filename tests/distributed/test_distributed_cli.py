"""``lopt meta-train --workers N``: usage errors before any work, and a run on local Ray."""

from __future__ import annotations

import json
import re
import sys

import pytest

import lopt
from lopt.cli.main import main

SMALL = [
    "--optimizer", "star", "--tasks", "quadratic_family", "--estimator", "pes",
    "--truncation", "5", "--horizon-min", "10", "--horizon-max", "20", "--slots", "2",
    "--eval-every", "2", "--eval-tasks", "2", "--eval-horizon", "10", "--checkpoint-every", "2",
    "--seed", "1", "--no-progress", "--opt", "hidden_sizes=[2]",
]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "workers must be a positive integer"),
        (["--workers", "3"], "3 workers need at least as many task slots"),
        (["--workers", "2", "--estimates-per-step", "3"], "cannot exceed workers"),
        (["--workers", "2", "--staleness", "-1"], "staleness must be an integer >= 0"),
        (["--staleness", "1", "--ray-address", "auto"],
         "--ray-address, --staleness only apply with --workers"),
        (["--workers", "2", "--cpus-per-worker", "4096"], "need 8192 cores, this machine has"),
    ],
)
def test_distributed_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["meta-train", "--outer-steps", "1", "--out", str(tmp_path / "x"), *SMALL, *argv])
    assert exc.value.code == 2
    assert re.search(re.escape(message), capsys.readouterr().err)
    assert not (tmp_path / "x").exists()  # nothing was started


def test_missing_ray_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SystemExit) as exc:
        main(["meta-train", "--outer-steps", "1", "--out", str(tmp_path / "x"), *SMALL,
              "--workers", "2"])
    assert exc.value.code == 2
    assert "pip install -e '.[distributed]'" in capsys.readouterr().err


@pytest.mark.slow
def test_meta_train_with_two_workers(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["meta-train", "--outer-steps", "3", "--out", str(out), *SMALL,
                 "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outer_step"] == 3
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "best.safetensors",
                 "theta.safetensors"):
        assert (out / name).exists(), name
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["outer_step"] for r in rows] == [1, 2, 3]
    assert all(r["estimates"] == 2 and len(r["arrivals"]) == 2 for r in rows)
    engine = json.loads((out / "config.json").read_text())["engine"]
    assert engine["kind"] == "ray" and engine["workers"] == 2
    theta, opt = lopt.load_meta_params(out / "theta.safetensors")
    assert opt.name == "star" and opt.hidden_sizes == (2,)
