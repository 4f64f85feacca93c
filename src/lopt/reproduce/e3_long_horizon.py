"""E3: the meta-trained optimizers applied for 10x the meta-training horizon.

The E2 runs (STAR and the blackbox, every seed, best held-out theta) train fixed members of the
meta-training family for ``long_horizon_factor x horizon_max`` steps. The paper's claim: the
blackbox tends to stall or diverge beyond the horizon it was trained for, STAR stays stable and
keeps improving. Reported per run: divergence, the loss at the end relative to the loss at the
meta-training horizon (< 1: still improving), and the speedup over tuned Adam at that length.
"""

from __future__ import annotations

from lopt.reproduce import e2_meta_speed
from lopt.reproduce.budget import BLACKBOX_VARIANT, STAR_VARIANT
from lopt.reproduce.context import Context, Outcome, markdown_table
from lopt.reproduce.evaluations import evaluate_runs, improvement

#: a run "kept improving" when its final smoothed loss is below this fraction of its loss at
#: the meta-training horizon, "degraded" when above the inverse, "stalled" in between
IMPROVING = 0.95
DEGRADED = 1.0 / IMPROVING


def run(ctx: Context) -> Outcome:
    budget = ctx.budget
    by_variant = e2_meta_speed.runs(ctx)
    labelled = {}
    for short, variant in (("STAR", STAR_VARIANT), ("blackbox", BLACKBOX_VARIANT)):
        for run in by_variant[variant]:
            labelled[f"{short} s{run.seed}"] = run
    steps = budget.long_horizon_factor * budget.horizon_max
    evaluation = evaluate_runs(ctx, "e3", labelled, budget.in_distribution_tasks, steps)
    suite = evaluation.results["suites"]["e3"]
    fraction = 1.0 / budget.long_horizon_factor
    per_label = {}
    for label in labelled:
        ratios = improvement(evaluation, "e3", label, fraction)
        rows = [r["optimizers"][label] for r in suite["tasks"]]
        per_label[label] = {
            "diverged": sum(o["diverged"] for o in rows),
            "improving": sum(r is not None and r < IMPROVING for r in ratios),
            "stalled": sum(r is not None and IMPROVING <= r <= DEGRADED for r in ratios),
            "degraded": sum(r is not None and r > DEGRADED for r in ratios),
            "loss_ratio_end_vs_horizon": ratios,
            "speedups": [o["speedup_label"] for o in rows],
            "summary": suite["summary"][label],
        }

    def totals(short):
        keys = [k for k in per_label if k.startswith(short + " ")]
        fields = ("diverged", "improving", "stalled", "degraded")
        return {f: sum(per_label[k][f] for k in keys) for f in fields}

    star, base = totals("STAR"), totals("blackbox")
    n = len(budget.seeds) * len(budget.in_distribution_tasks)
    held = (star["diverged"] == 0 and star["degraded"] == 0
            and star["improving"] >= base["improving"])

    def counts(d):
        return (f"diverged in {d['diverged']} of {n} runs, kept improving in {d['improving']}, "
                f"stalled in {d['stalled']} and got worse in {d['degraded']}")

    claim = (
        f"At {budget.long_horizon_factor}x the meta-training horizon ({steps} steps), STAR "
        f"{counts(star)}; the blackbox {counts(base)}. "
        + ("The paper's claim held here." if held else "The paper's claim did NOT hold here.")
    )
    rows = []
    for label, d in per_label.items():
        ratios = [f"{r:.2f}" if r is not None else "diverged"
                  for r in d["loss_ratio_end_vs_horizon"]]
        med = d["summary"]["median"]
        rows.append([label, d["diverged"], ", ".join(ratios), ", ".join(d["speedups"]),
                     "n/a" if med is None else f"{med:.2f}"])
    table = markdown_table(
        ["optimizer", "diverged", f"loss at {steps} / at {budget.horizon_max} (per task)",
         "speedup vs tuned Adam (per task)", "median speedup"], rows)
    setup = (
        f"The best held-out theta of each E2 run trains {', '.join(budget.in_distribution_tasks)}"
        f" for {steps} steps ({budget.eval_seeds} seeds each), against Adam tuned over its "
        f"learning-rate grid for up to 4x as long. 'Kept improving': the final smoothed loss is "
        f"below {IMPROVING:g}x its value at step {budget.horizon_max}; 'got worse': above "
        f"{DEGRADED:.3g}x; 'stalled' in between."
    )
    results = {"steps": steps, "per_optimizer": per_label, "star": star, "blackbox": base,
               "median_speedup": {k: v["summary"]["median"] for k, v in per_label.items()}}
    return Outcome(results, setup, table, ["e3/e3_curves.png", "e3/e3_speedup.png"], claim,
                   held)
