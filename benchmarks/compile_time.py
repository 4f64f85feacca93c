"""Cold and warm-cache start-up: seconds from launching ``lopt`` to its first outer step.

Every case runs the real CLI in a fresh subprocess, twice: *cold* with an empty compilation
cache (``$LOPT_CACHE`` pointed at a new temporary folder), then *warm* with the cache the cold
run filled. Measured per run:

* ``first_step_s``: wall seconds from launch until the first line of ``metrics.jsonl`` (the first
  outer step, its compilation and the step-0 held-out evaluation included) -- or, for the
  ``lopt train`` reference, until the run has finished;
* ``total_s``, ``cpu_s`` (user + system seconds of the child: on a shared machine the CPU time
  is the steadier number), ``peak_rss_mb`` (the child's peak resident memory).

Cases: a single task (``digits_mlp``), a family (``digits_mlp_family``), the 6-group mixture
(``mlp_family``), and the reference point of one ``lopt train`` run (STAR on ``digits_mlp``).
Ratios against the reference and cold/warm are computed in the same run. Prints one JSON object.

    python benchmarks/compile_time.py [--cases single,family,mixture,train] [--optimizer star]
                                      [--repeat N]

Measure on a quiet machine: compile times scale with whatever else is running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "single": "digits_mlp",
    "family": "digits_mlp_family",
    "mixture": "mlp_family",
}
LOPT = [sys.executable, "-m", "lopt.cli.main"]


def run_child(cmd: list[str], env: dict, watch: Path | None, timeout: float) -> dict:
    """Run ``cmd``; time until ``watch`` holds a line (None: until exit), CPU and peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while True:
        if first is None and watch is not None and watch.exists() and watch.read_text().strip():
            first = time.perf_counter() - t0
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    total = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {code}:\n{err[-3000:]}")
    if first is None and watch is not None and watch.exists() and watch.read_text().strip():
        first = total  # the step finished between two polls, right before exit
    return {
        "first_step_s": round(first if watch is not None else total, 2),
        "total_s": round(total, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
    }


def command(case: str, args, out: Path) -> tuple[list[str], Path | None]:
    if case == "train":
        cmd = [*LOPT, "train", "--task", "digits_mlp", "--optimizer", args.optimizer,
               "--steps", str(args.train_steps), "--out", str(out), "--no-progress"]
        return cmd, None
    cmd = [*LOPT, "meta-train", "--optimizer", args.optimizer, "--tasks", CASES[case],
           "--outer-steps", "1", "--num-slots", str(args.slots), "--truncation",
           str(args.truncation), "--eval-tasks", str(args.eval_tasks), "--out", str(out),
           "--no-progress"]
    return cmd, out / "metrics.jsonl"


def measure(case: str, args, root: Path) -> dict:
    """Cold then warm, ``args.repeat`` times (each repetition with its own empty cache).

    With several repetitions each phase reports the median of every number (peak memory: the
    largest) and ``first_step_s_runs``, all of them: single runs of the mixture vary by +-1.5 s
    on the 2-core machine, more than the differences worth measuring.
    """
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    for rep in range(args.repeat):
        cache = root / f"cache_{case}_{rep}"
        env = dict(os.environ, LOPT_CACHE=str(cache))
        env.pop("LOPT_NO_COMPILE_CACHE", None)
        for phase in ("cold", "warm"):
            out = root / f"{case}_{phase}_{rep}"
            cmd, watch = command(case, args, out)
            runs[phase].append(run_child(cmd, env, watch, args.timeout))
    result = {phase: summarize(rs) for phase, rs in runs.items()}
    result["cold_to_warm"] = round(
        result["cold"]["first_step_s"] / max(result["warm"]["first_step_s"], 1e-9), 2
    )
    return result


def summarize(runs: list[dict]) -> dict:
    """One run as measured; several: medians (peak memory: the largest) and every time."""
    if len(runs) == 1:
        return runs[0]
    out = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["first_step_s_runs"] = [r["first_step_s"] for r in runs]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="single,family,mixture,train",
                        help="comma-separated subset of single, family, mixture, train")
    parser.add_argument("--optimizer", default="star", choices=("star", "blackbox"))
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--eval-tasks", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=200,
                        help="steps of the lopt train reference run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repetitions of every case (medians reported, every time kept)")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in (*CASES, "train")]
    if bad:
        parser.error(f"unknown case(s) {bad}")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="lopt_compile_time_") as tmp:
        for case in cases:
            results[case] = measure(case, args, Path(tmp))
    out = {"results": results}
    if "train" in results:
        ref = results["train"]["cold"]["first_step_s"]
        out["cold_to_train_reference"] = {
            c: round(r["cold"]["first_step_s"] / ref, 2) for c, r in results.items() if c != "train"
        }
    out["config"] = {
        "optimizer": args.optimizer, "slots": args.slots, "truncation": args.truncation,
        "eval_tasks": args.eval_tasks, "train_steps": args.train_steps, "repeat": args.repeat,
        "tasks": {c: CASES.get(c, "digits_mlp (lopt train)") for c in cases},
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
