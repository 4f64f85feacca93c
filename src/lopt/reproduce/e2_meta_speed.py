"""E2: meta-training speed, STAR against the blackbox baseline on the same family and budget.

Both are meta-trained with PES for the same number of outer steps from several seeds. Compared
on the fixed held-out evaluation (same tasks for both optimizers of a seed) and on the PES
meta-loss. The headline number, ``meta_training_speedup``, is the median over seeds of: outer
steps the baseline used to reach its final held-out meta-loss / outer steps STAR needed to reach
that same value. The paper's claim: STAR meta-trains much faster (target here: >= 3).
"""

from __future__ import annotations

import numpy as np

from lopt.reproduce.budget import BLACKBOX_VARIANT, STAR_VARIANT
from lopt.reproduce.context import Context, Outcome, fmt, markdown_table
from lopt.reproduce.runs import meta_train, meta_training_speedup

TARGET = 3.0


def runs(ctx: Context) -> dict:
    """The E2 runs (also used by E3 and E4): ``{variant: [MetaRun per seed]}``."""
    return {
        variant: [meta_train(ctx.out, ctx.budget, variant, seed, progress=ctx.progress,
                             announce=ctx.announce) for seed in ctx.budget.seeds]
        for variant in (STAR_VARIANT, BLACKBOX_VARIANT)
    }


def run(ctx: Context) -> Outcome:
    from lopt.plotting import band_curves

    budget = ctx.budget
    by_variant = runs(ctx)
    star, base = by_variant[STAR_VARIANT], by_variant[BLACKBOX_VARIANT]
    per_seed = [meta_training_speedup(b, s) for b, s in zip(base, star, strict=True)]
    speedups = [p["speedup"] for p in per_seed]
    median = float(np.median(speedups))
    folder = ctx.folder("e2")
    band_curves(
        {name: (rs[0].eval_steps, np.stack([r.eval_loss for r in rs]))
         for name, rs in (("STAR", star), ("blackbox", base))},
        folder / "held_out.png",
        title="E2: held-out meta-loss during meta-training",
        xlabel="outer step", ylabel="normalized loss (fixed held-out tasks)",
    )
    window = max(1, budget.outer_steps // 20)

    def smooth(x):
        return np.convolve(x, np.ones(window) / window, mode="valid")

    band_curves(
        {name: (rs[0].meta_steps[window - 1:], np.stack([smooth(r.meta_loss) for r in rs]))
         for name, rs in (("STAR", star), ("blackbox", base))},
        folder / "meta_loss.png",
        title=f"E2: PES meta-loss (mean over {window} outer steps)",
        xlabel="outer step", ylabel="meta-loss",
    )
    rows = []
    for seed, b, s, p in zip(budget.seeds, base, star, per_seed, strict=True):
        rows.append([seed, f"{s.eval_loss[0]:.3f} -> {s.eval_loss[-1]:.3f}",
                     f"{b.eval_loss[0]:.3f} -> {b.eval_loss[-1]:.3f}", fmt(p["baseline_steps"]),
                     fmt(p["star_steps"]),
                     ("> " if p["lower_bound"] else "") + f"{p['speedup']:.2f}"])
    table = markdown_table(
        ["seed", "STAR held-out (start -> end)", "blackbox held-out", "blackbox steps to its "
         "final", "STAR steps to that", "meta-training speedup"], rows)
    held = median >= TARGET
    star_final = float(np.median([r.eval_loss[-1] for r in star]))
    base_final = float(np.median([r.eval_loss[-1] for r in base]))
    claim = (
        f"STAR reached the blackbox's final held-out meta-loss {median:.1f}x faster in outer "
        f"steps (median over {len(speedups)} seeds; per seed "
        f"{', '.join(f'{x:.1f}' for x in speedups)}), target >= {TARGET:g}: "
        + ("held" if held else f"missed by {TARGET - median:.1f}")
        + f". Final held-out meta-loss: STAR {star_final:.3f}, blackbox {base_final:.3f} "
        "(medians)."
    )
    setup = (
        f"PES on `{budget.family}`, {budget.outer_steps} outer steps, {budget.num_slots} slots, "
        f"truncation {budget.truncation}, horizons {budget.horizon_min}-{budget.horizon_max} "
        f"(log-uniform), sigma {budget.sigma}, outer Adam {budget.outer_lr} with clipping 1; "
        f"held-out evaluation every {budget.eval_every} steps on {budget.eval_tasks} fixed "
        f"task draws for {budget.eval_horizon} inner steps; seeds {list(budget.seeds)}. "
        "Same budget for both optimizers."
    )
    results = {
        "meta_training_speedup": median,
        "target": TARGET,
        "per_seed": per_seed,
        "final_eval_loss": {"star": star_final, "blackbox": base_final},
        "wall_s": {"star": [r.wall_s for r in star], "blackbox": [r.wall_s for r in base]},
    }
    return Outcome(results, setup, table, ["e2/held_out.png", "e2/meta_loss.png"], claim, held)
