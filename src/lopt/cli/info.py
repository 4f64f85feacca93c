"""``lopt info``: versions, devices, and the weights ``lopt.star()`` / ``lopt.blackbox()`` use.

For each learned optimizer the package knows (``star``, ``blackbox``) it reports the shipped
weights file (path, sha256) and its model card -- ``<kind>.md`` or ``<kind>.json`` next to the
weights -- or says that no weights ship, in which case the optimizer runs from its
meta-initialization.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    from lopt.cli.main import HelpFormatter

    p = sub.add_parser(
        "info",
        help="show the version, devices and the weights of the shipped optimizers",
        description="Print the lopt version, Python and package versions, JAX devices, and for "
        "each learned optimizer (star, blackbox) the weights file lopt.star() / lopt.blackbox() "
        "use (path, sha256, model card) or that none ships (meta-initialization).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def model_card(weights: Path) -> dict | None:
    """The model card next to ``weights``: ``{"path", "text", "sha256", "median_speedups"}``:
    the card for people (``<kind>.md``) if there is one, else the one for programs
    (``<kind>.json``), and what the JSON card records: the sha256 (None without one) and each
    suite's median speedup ({} without them)."""
    md, js = weights.with_suffix(".md"), weights.with_suffix(".json")
    card = md if md.is_file() else js if js.is_file() else None
    if card is None:
        return None
    try:
        data = json.loads(js.read_text()) if js.is_file() else {}
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    recorded = data.get("sha256")
    try:
        suites = data["evaluation"]["suites"] if "evaluation" in data else {}
        speedups = {name: suite["summary"]["median"] for name, suite in suites.items()
                    if (suite.get("summary") or {}).get("median") is not None}
    except (KeyError, TypeError, AttributeError):
        speedups = {}
    return {"path": str(card), "text": card.read_text(), "sha256": recorded,
            "median_speedups": speedups}


#: lines of a model card ``lopt info`` prints (the rest: the card itself, or ``--json``)
CARD_SUMMARY_LINES = 12


def card_summary(text: str) -> list[str]:
    """The card's head: everything before its evaluation tables, at most a dozen lines."""
    head = []
    for line in text.rstrip().splitlines():
        if line.startswith("## Evaluation"):
            break
        head.append(line)
    return [x for x in head if x.strip()][:CARD_SUMMARY_LINES]


def shipped_optimizers() -> dict:
    """Per learned optimizer: ``{"weights": {"path", "sha256"} | None, "model_card": ...,
    "verified": sha256 matches the card (None: no card to check against)}``."""
    from lopt.optimizers.pretrained import KINDS, shipped_weights
    from lopt.training.optimizers import weights_record

    out = {}
    for kind in KINDS:
        path = shipped_weights(kind)
        weights = weights_record(path) if path is not None else None
        card = model_card(path) if path is not None else None
        recorded = card and card["sha256"]
        out[kind] = {
            "weights": weights,
            "model_card": card,
            "verified": None if not recorded else recorded == weights["sha256"],
        }
    return out


def run(args) -> int:
    import lopt
    from lopt.utils.provenance import environment_info

    info = {"lopt": lopt.__version__, **environment_info(), "optimizers": shipped_optimizers()}
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"lopt {info['lopt']} (python {info['python']}, {info['platform']})")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    print("devices: " + ", ".join(info["devices"]))
    for kind, entry in info["optimizers"].items():
        weights = entry["weights"]
        if weights is None:
            print(f"{kind}: meta-initialization: no weights shipped")
            continue
        pad = " " * len(kind)
        check = {True: "matches the model card", False: "DOES NOT match the model card",
                 None: "no checksum in a model card to compare with"}[entry["verified"]]
        print(f"{kind}: weights {weights['path']}")
        print(f"{pad}  sha256 {weights['sha256']} ({check})")
        card = entry["model_card"]
        if card is None:
            print(f"{pad}  model card: none")
        else:
            print(f"{pad}  model card {card['path']} (its head below; the whole card is in "
                  "that file and in --json):")
            for line in card_summary(card["text"]):
                print(f"{pad}    {line}")
            if card["median_speedups"]:
                speedups = ", ".join(f"{k} {v:.2f}" for k, v in card["median_speedups"].items())
                print(f"{pad}  median speedup over tuned Adam: {speedups}")
    return 0
