"""``lopt info``: versions, devices, and the weights ``lopt.star()`` / ``lopt.blackbox()`` use.

For each learned optimizer the package knows (``star``, ``blackbox``) it reports the shipped
weights file (path, sha256) and its model card -- ``<kind>.md`` or ``<kind>.json`` next to the
weights -- or says that no weights ship, in which case the optimizer runs from its
meta-initialization.
"""

from __future__ import annotations

import json

KINDS = ("star", "blackbox")


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


def model_card(weights) -> dict | None:
    """``{"path", "text"}`` of the model card next to ``weights`` (``<kind>.md``, else
    ``<kind>.json``), or None."""
    for suffix in (".md", ".json"):
        card = weights.with_suffix(suffix)
        if card.is_file():
            return {"path": str(card), "text": card.read_text()}
    return None


def shipped_optimizers() -> dict:
    """Per learned optimizer: ``{"weights": {"path", "sha256"} | None, "model_card": ...}``."""
    from lopt.optimizers.pretrained import shipped_weights
    from lopt.training.optimizers import weights_record

    out = {}
    for kind in KINDS:
        path = shipped_weights(kind)
        out[kind] = {
            "weights": weights_record(path) if path is not None else None,
            "model_card": model_card(path) if path is not None else None,
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
        print(f"{kind}: weights {weights['path']}")
        print(f"{' ' * len(kind)}  sha256 {weights['sha256']}")
        card = entry["model_card"]
        if card is None:
            print(f"{' ' * len(kind)}  model card: none")
        else:
            print(f"{' ' * len(kind)}  model card {card['path']}:")
            for line in card["text"].rstrip().splitlines():
                print(f"{' ' * len(kind)}    {line}")
    return 0
