"""Ship meta-trained weights inside the package, with a model card (``.md`` and ``.json``).

    python scripts/ship_weights.py --kind star --run runs/star_shipped \
        --eval runs/shipped_eval --eval-command "lopt evaluate ..." \
        --command "lopt meta-train --config configs/star_shipped.toml ..."

Copies ``RUN/best.safetensors`` (the theta chosen by the fixed held-out evaluation) to
``src/lopt/weights/<kind>.safetensors`` and writes the card: the meta-training config and exact
command, the task mix, outer steps, wall time and CPU, the sha256 that ``lopt.star()`` verifies,
the licence, and the evaluation numbers of ``lopt evaluate`` (``EVAL/results.json``) with the
command that produced them.

    python scripts/ship_weights.py --kind star --sync-notes

copies the "## Notes" section of the shipped ``<kind>.md`` (the card people read and edit) into
``<kind>.json`` and changes nothing else: the cards of weights already shipped get their notes
edited by hand, the run and evaluation folders they were written from are gone, and the
machine-readable card must carry the same notes (a test checks it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
from pathlib import Path

from lopt.utils.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "lopt" / "weights"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _suite_rows(kind: str, results: dict, eval_command: str) -> dict:
    """Per suite: the optimizer's summary and per-task rows from one ``results.json``."""
    label = kind if kind in results["optimizers"] else next(iter(results["optimizers"]))
    suites = {}
    for name, suite in results["suites"].items():
        rows = {}
        for row in suite["tasks"]:
            o = row["optimizers"].get(label)
            if o is None:
                continue
            rows[row["task"]] = {
                "steps": row["steps"],
                "speedup": o["speedup_label"],
                "final_loss": o["final_loss"],
                "final_eval_loss": o["final_eval_loss"],
                "diverged": o["diverged"],
                "tuned_adam_lr": row["baseline"]["tuned_lr"],
                "tuned_adam_final_loss": row["baseline"]["final_loss"],
            }
        suites[name] = {"summary": suite["summary"].get(label), "tasks": rows,
                        "command": eval_command}
    return suites


def card(kind: str, run: Path, evaluations: list[Path], command: str,
         eval_commands: list[str], wall_s: float | None, notes: str) -> tuple[dict, str]:
    from lopt.optimizers.io import load_meta_params, read_metadata

    config = json.loads((run / "config.json").read_text())
    evals = _read_jsonl(run / "eval.jsonl")
    metrics = _read_jsonl(run / "metrics.jsonl")
    best = min(evals, key=lambda e: e["eval_loss"])
    theta, opt = load_meta_params(run / "best.safetensors")
    del theta
    suites, settings = {}, []
    for evaluation, eval_command in zip(evaluations, eval_commands, strict=True):
        results = json.loads((evaluation / "results.json").read_text())
        settings.append({"command": eval_command, "settings": results["settings"]})
        suites.update(_suite_rows(kind, results, eval_command))
    info = {
        "name": f"lopt {kind}",
        "optimizer": {"kind": kind, "config": opt.config()},
        "licence": "Apache-2.0",
        "meta_training": {
            "command": command,
            "config": config["config"],
            "task_mix": {"name": config["config"]["tasks"], "groups": config.get("groups")},
            "outer_steps": metrics[-1]["outer_step"] if metrics else 0,
            "selected_outer_step": best["outer_step"],
            "selected_eval_loss": best["eval_loss"],
            "wall_s": wall_s,
            "cpu": _cpu(),
            "environment": config.get("environment"),
            "source_metadata": read_metadata(run / "best.safetensors"),
        },
        "evaluation": {"runs": settings, "suites": suites},
        "notes": notes,
    }
    return info, _markdown(info)


#: how the card's Notes section starts: written by ``_markdown``, found by ``sync_notes``
NOTES_HEADING = "## Notes\n\n"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _hours(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 3600:.2f} h"


def _markdown(info: dict) -> str:
    mt, ev = info["meta_training"], info["evaluation"]
    lines = [
        f"# Model card: {info['name']}",
        "",
        f"Licence: {info['licence']} (as the code). sha256: `{info.get('sha256', '')}`.",
        "",
        "## How it was trained",
        "",
        f"- Command: `{mt['command']}`",
        f"- Task mix: `{mt['task_mix']['name']}` ({', '.join(mt['task_mix']['groups'] or [])})",
        f"- Outer steps: {mt['outer_steps']}; theta selected at outer step "
        f"{mt['selected_outer_step']} by the fixed held-out evaluation "
        f"({mt['selected_eval_loss']:.4f}).",
        f"- Wall time: {_hours(mt['wall_s'])} on {mt['cpu']} (2 cores, shared with other "
        "work).",
        f"- Optimizer config: `{json.dumps(info['optimizer']['config'], sort_keys=True)}`",
        "",
        "## Evaluation against learning-rate-tuned Adam",
        "",
        "Speedup = steps Adam (best learning rate of 1e-4..1e-1 for that target) needs to "
        "reach this optimizer's final smoothed training loss / this optimizer's steps; Adam runs "
        "4x the optimizer's steps, so values are measured up to 4. Commands:",
        "",
        *[f"- `{r['command']}`" for r in ev["runs"]],
        "",
    ]
    for name, suite in ev["suites"].items():
        s = suite["summary"] or {}
        med = s.get("median")
        lines += [f"### `{name}`: median speedup {med:.2f}" if med is not None else
                  f"### `{name}`", "", f"`{suite['command']}`", "",
                  "| task | steps | speedup | final loss | held-out | tuned Adam lr | diverged |",
                  "|---|---|---|---|---|---|---|"]
        for task, r in suite["tasks"].items():
            lines.append(f"| `{task}` | {r['steps']} | {r['speedup']} | {_num(r['final_loss'])} | "
                         f"{_num(r['final_eval_loss'])} | {r['tuned_adam_lr']} | "
                         f"{r['diverged']} |")
        lines.append("")
    if info["notes"]:
        lines += [NOTES_HEADING + info["notes"], ""]
    return "\n".join(lines)


def sync_notes(kind: str, weights: Path = WEIGHTS) -> bool:
    """Copy the Notes section of ``<kind>.md`` into ``<kind>.json``; True if the JSON changed."""
    markdown, card_path = weights / f"{kind}.md", weights / f"{kind}.json"
    if not markdown.is_file() or not card_path.is_file():
        raise SystemExit(f"no shipped {kind} card in {weights} (need {kind}.md and {kind}.json)")
    _, sep, notes = markdown.read_text().partition(NOTES_HEADING)
    if not sep:
        raise SystemExit(f"{markdown} has no '## Notes' section to copy")
    info = json.loads(card_path.read_text())
    notes = notes.rstrip("\n") + "\n"
    if info.get("notes") == notes:
        return False
    info["notes"] = notes
    atomic_write_json(card_path, info)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=("star", "blackbox"), required=True)
    p.add_argument("--sync-notes", action="store_true",
                   help="only copy the shipped card's Notes section from .md into .json")
    p.add_argument("--run", type=Path, help="lopt meta-train output folder")
    p.add_argument("--eval", type=Path, action="append",
                   help="lopt evaluate output folder (repeat for several)")
    p.add_argument("--command", help="the exact meta-training command")
    p.add_argument("--eval-command", action="append",
                   help="the exact evaluation command, one per --eval")
    p.add_argument("--wall-s", type=float, default=None, help="meta-training wall time")
    p.add_argument("--notes", type=Path, default=None,
                   help="markdown file: targets met or missed, what was tried")
    a = p.parse_args()
    required = ("run", "eval", "command", "eval_command")
    shipping = (*required, "wall_s", "notes")
    if a.sync_notes:
        extra = [f"--{n.replace('_', '-')}" for n in shipping if getattr(a, n) is not None]
        if extra:
            p.error(f"--sync-notes changes only the notes; drop {', '.join(extra)}")
        changed = sync_notes(a.kind)
        print(f"{a.kind}.json notes {'updated from' if changed else 'already match'} {a.kind}.md")
        return
    missing = [f"--{n.replace('_', '-')}" for n in required if not getattr(a, n)]
    if missing:
        p.error(f"shipping weights needs {', '.join(missing)} (or use --sync-notes)")
    if len(a.eval) != len(a.eval_command):
        p.error("give one --eval-command per --eval")
    notes = a.notes.read_text() if a.notes else ""
    info, _ = card(a.kind, a.run, a.eval, a.command, a.eval_command, a.wall_s, notes)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    target = WEIGHTS / f"{a.kind}.safetensors"
    shutil.copyfile(a.run / "best.safetensors", target)
    info["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    atomic_write_json(WEIGHTS / f"{a.kind}.json", info)
    (WEIGHTS / f"{a.kind}.md").write_text(_markdown(info) + "\n")
    print(f"shipped {target} (sha256 {info['sha256']}) with {a.kind}.json and {a.kind}.md")


if __name__ == "__main__":
    main()
