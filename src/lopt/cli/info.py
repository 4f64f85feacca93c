"""``lopt info``: versions and the optimizers and weights this installation ships."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions, devices and shipped weights")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from lopt.utils.provenance import environment_info

    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
