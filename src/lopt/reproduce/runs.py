"""Meta-training runs shared by the experiments (E2, E3, E4 and E5 reuse the same runs).

Each run lives in ``OUT/runs/<variant>_s<seed>/`` and is an ordinary ``lopt meta-train`` output
folder: interrupted runs continue from their checkpoint, finished ones are read back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lopt.reproduce.budget import ABLATIONS, Budget


def run_dir(out: Path, variant: str, seed: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "_", variant.lower()).strip("_")
    return out / "runs" / f"{slug}_s{seed}"


@dataclass
class MetaRun:
    """What one finished meta-training run left: its folder, evaluations and PES meta-loss."""

    variant: str
    seed: int
    path: Path
    eval_steps: np.ndarray
    eval_loss: np.ndarray
    meta_steps: np.ndarray
    meta_loss: np.ndarray
    wall_s: float

    @property
    def best_weights(self) -> Path:
        return self.path / "best.safetensors"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def meta_train(out: Path, budget: Budget, variant: str, seed: int, *, progress: bool = True,
               announce=print) -> MetaRun:
    """Run (or continue, or just read) one meta-training run of ``variant``."""
    from lopt.metatrain.trainer import CHECKPOINT, MetaTrainer

    optimizer, switches = ABLATIONS[variant]
    config = budget.metatrain_config(optimizer, switches, seed)
    path = run_dir(out, variant, seed)
    done = _read_jsonl(path / "metrics.jsonl")
    finished = (path / "theta.safetensors").exists() and done and \
        done[-1]["outer_step"] >= config.outer_steps
    if not finished:
        announce(f"meta-training {variant} (seed {seed}): {config.outer_steps} PES steps on "
                 f"{budget.family} ...")
        trainer = MetaTrainer(config, path)
        trainer.run(resume=(path / CHECKPOINT).exists(), progress=progress)
    return read_run(path, variant, seed)


def read_run(path: Path, variant: str, seed: int) -> MetaRun:
    evals = _read_jsonl(path / "eval.jsonl")
    metrics = _read_jsonl(path / "metrics.jsonl")
    per_step = json.loads((path / "config.json").read_text())["inner_steps_per_outer_step"]
    wall = float(sum(per_step / m["inner_steps_per_s"] for m in metrics
                     if m.get("inner_steps_per_s")))
    return MetaRun(
        variant=variant,
        seed=seed,
        path=path,
        eval_steps=np.array([e["outer_step"] for e in evals], float),
        eval_loss=np.array([e["eval_loss"] for e in evals], float),
        meta_steps=np.array([m["outer_step"] for m in metrics], float),
        meta_loss=np.array([m["meta_loss"] for m in metrics], float),
        wall_s=wall,
    )


def steps_to_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """First outer step whose evaluation is ``<= target`` (None if never)."""
    hit = np.flatnonzero(np.asarray(values) <= target)
    return float(steps[hit[0]]) if hit.size else None


def meta_training_speedup(baseline: MetaRun, star: MetaRun) -> dict:
    """Outer steps the baseline used to reach its final held-out meta-loss, divided by the
    outer steps STAR needed to reach that same value (paired: same seed, same evaluation
    tasks). STAR already there at step 0 gives a lower bound using the first evaluation
    interval; STAR never getting there gives 0."""
    target = float(baseline.eval_loss[-1])
    base_steps = steps_to_reach(baseline.eval_steps, baseline.eval_loss, target)
    star_steps = steps_to_reach(star.eval_steps, star.eval_loss, target)
    out = {"target": target, "baseline_steps": base_steps, "star_steps": star_steps,
           "lower_bound": False}
    if star_steps is None:
        out["speedup"] = 0.0
    elif star_steps == 0:
        interval = float(star.eval_steps[1]) if len(star.eval_steps) > 1 else 1.0
        out["speedup"] = (base_steps or 0.0) / interval
        out["lower_bound"] = True
    else:
        out["speedup"] = (base_steps or 0.0) / star_steps
    return out
