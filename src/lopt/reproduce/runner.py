"""Run the paper's experiments E1-E5 and write ``report.md``, ``results.json`` and figures.

A finished experiment leaves ``OUT/eN/result.json`` and is not run again; inside an
unfinished one, finished meta-training runs and evaluation cells are kept too, so a re-run with
the same output folder continues where it stopped.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from lopt.reproduce.budget import Budget
from lopt.reproduce.context import Context, Outcome

#: experiment id -> (module, title)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "E1": ("lopt.reproduce.e1_stability", "Stability on the noisy quadratic model"),
    "E2": ("lopt.reproduce.e2_meta_speed", "Meta-training speed: STAR vs the blackbox"),
    "E3": ("lopt.reproduce.e3_long_horizon", "Long horizons (10x meta-training)"),
    "E4": ("lopt.reproduce.e4_ood", "Out-of-distribution tasks vs tuned Adam"),
    "E5": ("lopt.reproduce.e5_ablations", "Ablations of the inductive biases"),
}


def parse_only(text: str | None) -> list[str]:
    """``"E2,E5"`` -> ``["E2", "E5"]`` (case-insensitive); None -> all."""
    if not text:
        return list(EXPERIMENTS)
    wanted = [t.strip().upper() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in EXPERIMENTS]
    if unknown or not wanted:
        raise ValueError(
            f"unknown experiment(s) {unknown or text!r}; choose from {', '.join(EXPERIMENTS)}"
        )
    return [e for e in EXPERIMENTS if e in wanted]


def run_experiment(ctx: Context, exp: str) -> Outcome:
    """Run ``exp`` unless ``OUT/<exp>/result.json`` exists; return its outcome."""
    path = ctx.out / exp.lower() / "result.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Outcome(**data["outcome"])
    from lopt.utils.io import atomic_write_json

    module = importlib.import_module(EXPERIMENTS[exp][0])
    t0 = time.perf_counter()
    outcome = module.run(ctx)
    atomic_write_json(path, {"outcome": outcome.to_dict(),
                             "wall_s": round(time.perf_counter() - t0, 1)})
    return outcome


def report_markdown(budget: Budget, outcomes: dict[str, Outcome], walls: dict,
                    command: str | None) -> str:
    lines = [
        "# Reproduction of Harrison, Metz & Sohl-Dickstein (NeurIPS 2022) at small scale",
        "",
        f"Budget: `{budget.name}`. Every number below was measured by this run; each "
        "experiment ends with one sentence on whether the paper's claim held here, generated "
        "from those numbers.",
        "",
    ]
    if command:
        lines += ["```", command, "```", ""]
    lines += ["| experiment | claim held | wall time |", "|---|---|---|"]
    for exp, outcome in outcomes.items():
        held = {True: "yes", False: "**no**", None: "undecided"}[outcome.held]
        wall = walls.get(exp)
        lines.append(f"| {exp}: {EXPERIMENTS[exp][1]} | {held} | "
                     f"{'' if wall is None else f'{wall:.0f} s'} |")
    lines.append("")
    for exp, outcome in outcomes.items():
        lines += [f"## {exp}: {EXPERIMENTS[exp][1]}", "", "**Setup.** " + outcome.setup, "",
                  outcome.table, ""]
        lines += [f"![{exp}]({fig})" for fig in outcome.figures]
        lines += ["", "**Result.** " + outcome.claim, ""]
    return "\n".join(lines)


def reproduce(out: str | Path, budget: Budget, only: list[str] | None = None, *,
              progress: bool = True, announce=print, should_stop=None,
              command: str | None = None) -> dict:
    """Run the experiments ``only`` (default all) and write the report; returns results."""
    from lopt.utils.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, budget, progress=progress, announce=announce, should_stop=should_stop)
    outcomes: dict[str, Outcome] = {}
    for exp in only or list(EXPERIMENTS):
        announce(f"== {exp}: {EXPERIMENTS[exp][1]}")
        outcomes[exp] = run_experiment(ctx, exp)
        announce(f"{exp}: {outcomes[exp].claim}")
    walls = {
        exp: json.loads((out / exp.lower() / "result.json").read_text()).get("wall_s")
        for exp in outcomes
    }
    results = {
        "budget": budget.__dict__,
        "experiments": {exp: o.to_dict() for exp, o in outcomes.items()},
        "wall_s": walls,
    }
    if "E2" in outcomes:
        results["meta_training_speedup"] = outcomes["E2"].results["meta_training_speedup"]
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "report.md",
                       report_markdown(budget, outcomes, walls, command).encode())
    return results
