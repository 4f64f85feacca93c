"""Evaluating meta-trained runs against tuned Adam (E3, E4, E5 share this)."""

from __future__ import annotations

import numpy as np

from lopt.evaluate import metrics
from lopt.evaluate.harness import EvalSettings, Evaluation, Interrupted, evaluate
from lopt.evaluate.suites import SuiteTask
from lopt.reproduce.context import Context
from lopt.reproduce.runs import MetaRun


def spec_of(run: MetaRun, label: str):
    """The best-evaluated theta of a run as an optimizer to evaluate."""
    from lopt.optimizers.io import load_meta_params
    from lopt.training.optimizers import file_sha256, learned_spec

    theta, opt = load_meta_params(run.best_weights)
    weights = {"path": str(run.best_weights), "sha256": file_sha256(run.best_weights)}
    return learned_spec(theta, opt, label=label, kind="path", weights=weights)


def evaluate_runs(ctx: Context, folder: str, labelled: dict[str, MetaRun],
                  tasks: tuple[str, ...], steps: int) -> Evaluation:
    """Every run on every task for ``steps`` steps, against tuned Adam; figures go to
    ``OUT/<folder>``. Cells are kept in one ``OUT/cells`` shared by all experiments, so an
    interrupted experiment continues and a (theta, task, steps) pair that two experiments
    need -- or the baseline's grid on one task -- is computed once."""
    from lopt.evaluate import report

    specs = [spec_of(run, label) for label, run in labelled.items()]
    suite = {folder: tuple(SuiteTask(t, steps) for t in tasks)}
    out = ctx.folder(folder)
    ctx.announce(f"{folder}: {len(specs)} optimizers x {len(tasks)} tasks x {steps} steps "
                 f"(+ Adam's learning-rate grid) ...")
    evaluation = evaluate(
        specs, suite, EvalSettings(seeds=ctx.budget.eval_seeds), ctx.out,
        should_stop=ctx.should_stop,
    )
    report.figures(evaluation, out)
    return evaluation


def improvement(evaluation: Evaluation, suite: str, label: str, fraction: float) -> list:
    """Per task: smoothed loss at the end / at ``fraction`` of the run (< 1: still improving;
    None if diverged)."""
    out = []
    for run in evaluation.runs[suite]:
        curve = run.optimizers[label].losses[0].astype(np.float64)
        w = metrics.window(len(curve))
        if metrics.is_diverged(curve, w):
            out.append(None)
            continue
        s = metrics.smoothed(curve, w)
        early = s[max(0, int(fraction * len(s)) - 1)]
        out.append(float(s[-1] / early) if early > 0 else None)
    return out


__all__ = ["Interrupted", "evaluate_runs", "improvement", "spec_of"]
