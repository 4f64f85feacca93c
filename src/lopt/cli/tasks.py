"""``lopt tasks``: list the registered tasks, families and mixtures, one line each."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    from lopt.cli.main import HelpFormatter

    p = sub.add_parser(
        "tasks",
        help="list registered tasks (names for lopt train --task)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, kind, ...}")
    p.set_defaults(func=run)


def run(args) -> int:
    from lopt.tasks.registry import entry, names

    rows = [entry(n) for n in names()]
    if args.json:
        print(json.dumps([{"name": e.name, "kind": e.kind, "description": e.description}
                          for e in rows], indent=2))
        return 0
    width = max(len(e.name) for e in rows)
    for e in rows:
        print(f"{e.name:<{width}}  {e.kind:<7}  {e.description}")
    return 0
