"""The evaluation harness: cells on disk, resuming without recomputing, tuning, CLI errors."""

import json

import numpy as np
import pytest

import lopt.training.loop as loop
from lopt.cli.main import main
from lopt.evaluate import harness, metrics
from lopt.evaluate.suites import SuiteTask
from lopt.training.optimizers import hand_designed_spec, resolve

SETTINGS = harness.EvalSettings(seeds=2, cap=2.0, grid=(0.003, 0.03, 0.3), eval_points=2)
TASKS = {"t": (SuiteTask("quadratic", 40), SuiteTask("nqm", 40))}


def _opts():
    return [hand_designed_spec("sgd", 0.05), resolve("star")]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, harness.evaluate(_opts(), TASKS, SETTINGS, out)


def test_results_have_every_task_optimizer_and_summary(full_run):
    _, ev = full_run
    suite = ev.results["suites"]["t"]
    assert [r["task"] for r in suite["tasks"]] == ["quadratic", "nqm"]
    for row in suite["tasks"]:
        assert row["baseline"]["tuned_lr"] in SETTINGS.grid
        assert set(row["optimizers"]) == {"sgd", "star"}
    assert set(suite["summary"]) == {"sgd", "star"}
    json.dumps(ev.results)  # JSON-ready


def test_numbers_follow_from_the_curves(full_run):
    """Recompute the tuned rate and the speedup from the stored curves with the metric
    functions (tested on hand-made curves in test_metrics) and compare."""
    _, ev = full_run
    run = ev.runs["t"][0]
    row = ev.results["suites"]["t"]["tasks"][0]
    finals = [metrics.smoothed(c.astype(float), metrics.window(40))[39]
              for c in run.baseline.losses]
    assert row["baseline"]["tuned_lr"] == SETTINGS.grid[int(np.nanargmin(finals))]
    best, _ = metrics.best_speedup(run.optimizers["sgd"].losses[0], list(run.baseline.losses),
                                   SETTINGS.cap)
    assert row["optimizers"]["sgd"]["speedup"]["value"] == pytest.approx(best.value)
    # the baseline ran cap x the steps, the optimizers the steps
    assert run.baseline.losses.shape == (3, 80) and run.optimizers["sgd"].losses.shape == (1, 40)


def test_same_seeds_give_same_baseline_as_a_direct_run(full_run):
    """The baseline cell equals Adam run directly through the training loop at one rate."""
    from lopt.evaluate.suites import build_task
    from lopt.training.loop import stack_variants, train_curves

    _, ev = full_run
    spec = hand_designed_spec("adam", 0.03)
    curves = train_curves(build_task("quadratic"), spec.make_tx, stack_variants([spec.theta]),
                          [0, 1], 80)
    np.testing.assert_allclose(ev.runs["t"][0].baseline.losses[1],
                               curves.losses[0].mean(axis=0), rtol=1e-5)


def test_interrupted_evaluation_resumes_without_recomputing(tmp_path, full_run, monkeypatch):
    calls = []
    real = loop.train_curves

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_curves", counting)
    # stop as soon as the first cell is on disk
    stop = lambda: any((tmp_path / "cells").glob("*.safetensors"))
    with pytest.raises(harness.Interrupted):
        harness.evaluate(_opts(), TASKS, SETTINGS, tmp_path, should_stop=stop)
    assert len(list((tmp_path / "cells").glob("*.safetensors"))) == 1
    first = len(calls)
    ev = harness.evaluate(_opts(), TASKS, SETTINGS, tmp_path)
    # 2 tasks x (grid + 2 optimizers) = 6 cells; the finished one was loaded, not rerun
    assert len(calls) - first == 5
    assert len(list((tmp_path / "cells").glob("*.safetensors"))) == 6
    assert _without_timing(ev.results["suites"]) == _without_timing(full_run[1].results["suites"])
    calls.clear()
    harness.evaluate(_opts(), TASKS, SETTINGS, tmp_path)
    assert calls == []  # everything cached


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k != "wall_s"}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_cells_are_keyed_by_the_optimizer_not_its_name(tmp_path, full_run):
    """Another learning rate is another cell; the same optimizer under another label is not."""
    import dataclasses

    out, _ = full_run
    before = set((out / "cells").glob("*"))
    harness.evaluate([hand_designed_spec("sgd", 0.07)], {"t": TASKS["t"][:1]}, SETTINGS, out)
    assert len(set((out / "cells").glob("*")) - before) == 1
    before = set((out / "cells").glob("*"))
    renamed = dataclasses.replace(hand_designed_spec("sgd", 0.05), label="my sgd")
    ev = harness.evaluate([renamed], {"t": TASKS["t"][:1]}, SETTINGS, out)
    assert set((out / "cells").glob("*")) == before
    assert "my sgd" in ev.results["suites"]["t"]["tasks"][0]["optimizers"]


def test_cli_writes_report_results_and_figures(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--optimizer", "sgd", "--tasks", "quadratic", "--steps", "30",
               "--seeds", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    for name in ("results.json", "report.md", "config.json", "custom_curves.png",
                 "custom_speedup.png"):
        assert (out / name).exists(), name
    assert "custom: sgd: median" in capsys.readouterr().out
    # a second run into the same folder continues (here: everything is cached)
    assert main(["evaluate", "--optimizer", "sgd", "--tasks", "quadratic", "--steps", "30",
                 "--seeds", "1", "--out", str(out), "--no-progress"]) == 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--optimizer", "star", "--suite", "nope"], ["in-distribution", "ood", "long-horizon"]),
        (["--optimizer", "star", "--tasks", "digits_mlp,nope"], ["digits_mlp", "nqm"]),
        (["--optimizer", "missing.safetensors"], ["star", "blackbox", "adam", "file not found"]),
        (["--optimizer", "star", "--seeds", "0"], ["seeds"]),
        (["--optimizer", "star", "--baseline", "prodigy"], ["sets its own step size", "adamw"]),
        (["--optimizer", "star", "--baseline", "lbfgs"], ["unknown", "adam, adamw"]),
    ],
)
def test_bad_input_exits_2_and_lists_choices(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for word in expected:
        assert word in err
    assert not (tmp_path / "x").exists()


def test_out_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--optimizer", "sgd", "--tasks", "quadratic", "--out", str(f)])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
    d = tmp_path / "dir"
    d.mkdir()
    (d / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--optimizer", "sgd", "--tasks", "quadratic", "--out", str(d)])
    assert exc.value.code == 2 and "not empty" in capsys.readouterr().err
    assert (d / "mine.txt").read_text() == "keep"
