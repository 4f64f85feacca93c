"""The ``lopt`` entry point.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which registers
the subcommand and sets ``func`` (``func(args) -> int`` exit code) as its default. Modules
are imported lazily by name so that ``lopt --help`` stays fast and one broken subcommand
cannot take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from lopt.utils.compile import enable_compilation_cache  # noqa: F401  (also the CLI's)

# Subcommand modules under lopt.cli, in the order ``lopt --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "info",
    "train",
    "tasks",
    "meta_train",
    "evaluate",
    "reproduce",
    "stability",
)


class UsageError(Exception):
    """Bad user input: printed as ``lopt: error: ...`` with exit code 2, no traceback."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default after its help text (unless the text already says it, or
    there is no default to show: ``None``, a switch that is off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS
        if action.option_strings and not nothing and default != [] and "default" not in text:
            text += " (default: %(default)s)"
        return text


class RawHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` that keeps the description's own line breaks."""


def build_parser() -> argparse.ArgumentParser:
    from lopt import __version__

    parser = argparse.ArgumentParser(
        prog="lopt",
        formatter_class=HelpFormatter,
        description="Learned optimizers that are stable by design (STAR).",
    )
    parser.add_argument("--version", action="version", version=f"lopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lopt.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lopt.utils.rundir import RunDirError

    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        if argv is None:  # a real command line, not an in-process call from tests
            enable_compilation_cache()
        return int(args.func(args) or 0)
    except (UsageError, RunDirError) as err:
        parser.exit(2, f"lopt: error: {err}\n")
    except KeyboardInterrupt:
        # a Ctrl-C that no command turned into a clean stop (during start-up, or a second one)
        out = getattr(args, "out", None)
        where = f"; {out} may hold an incomplete run" if out and Path(out).is_dir() else ""
        print(f"lopt: aborted by Ctrl-C{where}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
