"""``report.md``, ``results.json`` and figures of an evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lopt.evaluate import metrics
from lopt.evaluate.harness import Evaluation
from lopt.evaluate.suites import SUITE_DESCRIPTIONS

#: at most this many points per plotted curve
_PLOT_POINTS = 600


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def _lr(x, edge: bool) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}{' (edge)' if edge else ''}"


def summary_line(summary: dict) -> str:
    if summary["median"] is None:
        return f"all {summary['tasks']} tasks diverged"
    lo, hi = summary["median_ci95"]
    text = (
        f"median {summary['median']:.2f} (95% CI {lo:.2f}-{hi:.2f}), IQM {summary['iqm']:.2f}"
        f" over {summary['tasks'] - summary['diverged']} tasks"
    )
    if summary["censored"]:
        text += f"; {summary['censored']} at the cap (lower bounds)"
    if summary["diverged"]:
        text += f"; **{summary['diverged']} diverged**"
    return text


def suite_markdown(name: str, suite: dict, settings: dict) -> str:
    labels = list(suite["summary"])
    lines = [f"## Suite `{name}`", ""]
    if name in SUITE_DESCRIPTIONS:
        lines += [SUITE_DESCRIPTIONS[name] + ".", ""]
    lines += ["Speedup over learning-rate-tuned " + settings["baseline"] + " (steps it needs to "
              "reach the optimizer's final smoothed loss / the optimizer's steps; > 1 is "
              "faster):", ""]
    for label in labels:
        lines.append(f"- **{label}**: {summary_line(suite['summary'][label])}")
    lines.append("")
    head = ["task", "steps", f"tuned {settings['baseline']} lr", "its final loss",
            "its held-out"]
    for label in labels:
        head += [f"{label} speedup", "final loss", "held-out"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for row in suite["tasks"]:
        b = row["baseline"]
        cells = [f"`{row['task']}`", str(row["steps"]), _lr(b["tuned_lr"], b["tuned_lr_on_edge"]),
                 _fmt(b["final_loss"]), _fmt(b["final_eval_loss"])]
        for label in labels:
            o = row["optimizers"][label]
            sp = o["speedup_label"]
            if not o["diverged"] and o["speedup_lr"] is not None:
                sp += f" (lr {_lr(o['speedup_lr'], o['speedup_lr_on_edge'])})"
            cells += [sp, _fmt(o["final_loss"]), _fmt(o["final_eval_loss"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"![loss curves]({name}_curves.png)", "", f"![speedups]({name}_speedup.png)", ""]
    return "\n".join(lines)


def markdown(results: dict, command: str | None = None) -> str:
    s = results["settings"]
    lines = [
        "# Evaluation against learning-rate-tuned " + s["baseline"],
        "",
        f"Seeds per task: {s['seeds']}. The baseline runs every learning rate of its grid "
        f"({', '.join(f'{x:g}' for x in s['grid'])}) for {s['cap']:g}x the optimizer's steps. "
        "Speedup: the steps the grid point that gets there first needs to reach the "
        "optimizer's final smoothed training loss, divided by the optimizer's steps "
        f"(values at the cap are reported as >= {s['cap']:g}). Losses are smoothed over the "
        "last 5% of steps and averaged over seeds; 'final loss' and 'held-out' columns compare "
        "at the optimizer's step count against the grid point with the lowest smoothed loss "
        "there. '(edge)' marks a chosen learning rate on the grid's edge. A run that "
        "diverged (non-finite, or ending above its initial loss) is reported, not averaged.",
        "",
    ]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += ["Optimizers:", ""]
    for label, d in results["optimizers"].items():
        w = d.get("weights") or {}
        src = w.get("path") or w.get("source") or (f"lr {d['learning_rate']}"
                                                   if d.get("learning_rate") else "")
        sha = f", sha256 {w['sha256'][:12]}..." if w.get("sha256") else ""
        lines.append(f"- `{label}` ({d['kind']}): {src}{sha}")
    lines.append("")
    for name, suite in results["suites"].items():
        lines.append(suite_markdown(name, suite, s))
    return "\n".join(lines)


def _thin(x: np.ndarray, y: np.ndarray):
    step = max(1, len(x) // _PLOT_POINTS)
    return x[::step], y[::step]


def figures(evaluation: Evaluation, out_dir: Path) -> list[str]:
    """Per suite: loss curves per task (each optimizer and tuned baseline) and speedup bars."""
    from lopt import plotting

    written = []
    for name, runs in evaluation.runs.items():
        rows = evaluation.results["suites"][name]["tasks"]
        baseline = evaluation.results["settings"]["baseline"]
        panels = []
        for run, row in zip(runs, rows, strict=True):
            steps = run.task.steps
            w = metrics.window(steps)
            lines = []
            for label, cell in run.optimizers.items():
                y = metrics.smoothed(cell.losses[0].astype(np.float64), w)
                lines.append((label, *_thin(np.arange(1, len(y) + 1), y)))
            lr = row["baseline"]["tuned_lr"]
            if lr is not None:
                idx = row["baseline"]["grid"].index(lr)
                y = metrics.smoothed(run.baseline.losses[idx].astype(np.float64), w)
                lines.append((f"{baseline} lr {lr:g}", *_thin(np.arange(1, len(y) + 1), y)))
            panels.append((f"{run.task.task} ({steps} steps)", lines))
        path = out_dir / f"{name}_curves.png"
        plotting.loss_curves(panels, path)
        written.append(str(path))
        labels = list(evaluation.results["suites"][name]["summary"])
        speedups = {
            label: [r["optimizers"][label]["speedup"]["value"] for r in rows] for label in labels
        }
        path = out_dir / f"{name}_speedup.png"
        plotting.speedup_bars(
            [r["task"] for r in rows], speedups, path,
            cap=evaluation.results["settings"]["cap"],
            title=f"{name}: speedup over tuned {baseline}",
        )
        written.append(str(path))
    return written


def write(evaluation: Evaluation, out_dir: str | Path, *, command: str | None = None,
          extra: dict | None = None) -> dict:
    """Write ``results.json``, ``report.md`` and the figures; returns the file paths."""
    from lopt.utils.io import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    results = dict(evaluation.results, **(extra or {}))
    if command:
        results["command"] = command
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "report.md", markdown(results, command).encode())
    figs = figures(evaluation, out)
    return {"results": str(out / "results.json"), "report": str(out / "report.md"),
            "figures": figs}
