"""``lopt reproduce``: the paper's experiments E1-E5 at small scale, with a report."""

from __future__ import annotations

import sys
from pathlib import Path

BUDGET_FILE = "budget.txt"


def add_parser(sub) -> None:
    from lopt.cli.main import HelpFormatter
    from lopt.utils.rundir import add_run_dir_flags

    p = sub.add_parser(
        "reproduce",
        help="reproduce the paper's experiments E1-E5 at small scale; writes report.md",
        description=(
            "Run the experiments of Harrison, Metz & Sohl-Dickstein (NeurIPS 2022) at small "
            "scale: E1 stability on the noisy quadratic model (NQM), E2 meta-training speed of "
            "STAR vs the blackbox learned optimizer, E3 long horizons, E4 tasks unlike the "
            "meta-training ones vs learning-rate-tuned Adam, E5 ablations. Writes "
            "OUT/report.md (setup, figure, table and whether each claim held here), "
            "OUT/results.json and figures. Finished experiments, meta-training runs and "
            "evaluation cells are kept: re-run the same command to continue."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="the small budget (about 15 minutes on 2 CPU cores) instead of the "
                   "full one (a few hours)")
    p.add_argument("--only", default=None, metavar="E1,E2,...",
                   help="run only these experiments (E3 and E4 reuse E2's runs; default: all)")
    p.add_argument("--out", required=True,
                   help="output folder; a reproduction already there is continued")
    add_run_dir_flags(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from lopt.cli.main import UsageError
    from lopt.reproduce.budget import FULL, QUICK
    from lopt.reproduce.runner import parse_only

    try:
        only = parse_only(args.only)
    except ValueError as err:
        raise UsageError(str(err)) from None
    budget = QUICK if args.quick else FULL
    marker = Path(args.out) / BUDGET_FILE
    if not args.overwrite and marker.is_file() and marker.read_text().strip() != budget.name:
        raise UsageError(f"{args.out} holds a '{marker.read_text().strip()}' reproduction; this "
                         f"is '{budget.name}': choose another --out (or --overwrite)")

    from lopt.evaluate.harness import Interrupted
    from lopt.reproduce.runner import reproduce
    from lopt.utils.interrupt import graceful_interrupt
    from lopt.utils.io import atomic_write_bytes
    from lopt.utils.rundir import prepare_continuable_run_dir

    out, continued = prepare_continuable_run_dir(args.out, command="reproduce",
                                                 overwrite=args.overwrite, resumable=BUDGET_FILE)
    if continued:
        print(f"lopt reproduce: continuing the reproduction in {out} (finished work is kept; "
              "--overwrite starts afresh)", file=sys.stderr)
    atomic_write_bytes(out / BUDGET_FILE, (budget.name + "\n").encode())
    command = "lopt " + " ".join(sys.argv[1:]) if sys.argv and "lopt" in sys.argv[0] else None

    def announce(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        with graceful_interrupt("lopt reproduce: stopping at the next safe point (Ctrl-C "
                                "again to abort)") as stop:
            reproduce(out, budget, only, progress=not args.no_progress, announce=announce,
                      should_stop=stop.is_set, command=command)
    except (Interrupted, KeyboardInterrupt):
        print(f"lopt reproduce: interrupted; finished experiments, meta-training checkpoints "
              f"and evaluation cells are kept in {out}; run the same command to continue",
              file=sys.stderr)
        return 130
    print(f"lopt reproduce: wrote {out / 'report.md'} and {out / 'results.json'}")
    return 0
