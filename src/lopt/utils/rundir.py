"""The run-directory contract every command that writes outputs follows.

A command calls :func:`prepare_run_dir` once, after validating its arguments and *before* any
expensive work, and gets back the directory to write into (a command with slow checks of its
own -- loading weights, building tasks -- calls :func:`check_run_dir` first, which decides
without touching anything). Typical use::

    from lopt.utils.rundir import add_run_dir_flags, prepare_run_dir
    add_run_dir_flags(parser)                      # --overwrite (and --resume if resumable)
    out = prepare_run_dir(args.out, command="evaluate", overwrite=args.overwrite)

The rules:

* ``--out`` that names an existing file (or anything that is not a directory) is refused.
* A missing or empty directory is created / used as is (one holding only the marker file
  :data:`MARKER` counts as empty: its run stopped before it wrote anything).
* A non-empty directory is refused, unless

  - ``resume=True`` and the command can resume (``resumable`` names the file a resume needs,
    e.g. ``"checkpoint.safetensors"``) and that file is there: the contents are kept; or
  - ``overwrite=True`` and the directory is an lopt run directory (it holds the marker file
    :data:`MARKER` that this function writes, or a ``config.json`` written by lopt): its contents
    are deleted first. A directory lopt did not create is never emptied.

* ``resume=True`` without something to resume is refused too (it never silently starts over).

Every refusal raises :class:`RunDirError` with a one-line message that says what to do;
``lopt`` prints it as ``lopt: error: ...`` and exits with status 2. Files inside the directory
are written with :mod:`lopt.utils.io` (temporary file + rename), so an interrupted write never
leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

#: Written into every directory this module prepares: what created it (overwrite checks it).
MARKER = ".lopt-run.json"


class RunDirError(ValueError):
    """A run directory that cannot be used; the message is one line that says why and what to
    do instead. The command line reports it with exit status 2."""


def is_lopt_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` was written by an lopt command (marker file, or an lopt config.json)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("environment" in config or "lopt_version" in config)


def _describe(entries: list[str], limit: int = 4) -> str:
    shown = ", ".join(sorted(entries)[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def check_run_dir(
    path: str | os.PathLike,
    *,
    command: str,
    resume: bool = False,
    overwrite: bool = False,
    resumable: str | None = None,
    flag: str = "--out",
) -> str:
    """Check ``path`` against the contract without touching it; return what
    :func:`prepare_run_dir` will do: ``"new"``, ``"resume"`` or ``"overwrite"``.

    Commands call this first (it is instant) when they have slower checks to make before
    :func:`prepare_run_dir` creates anything. Arguments and errors as there.
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; give one of them")
    if resume and resumable is None:
        raise RunDirError(f"lopt {command} cannot resume a run; use --overwrite to start again")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{flag} {path} is a file, not a directory; choose a directory path")
    # the marker alone (a run stopped before it wrote anything) does not make it a used one
    entries = [p.name for p in path.iterdir() if p.name != MARKER] if path.is_dir() else []
    if resume:
        if resumable is not None and (path / resumable).is_file():
            return "resume"
        where = "does not exist" if not path.exists() else (
            "is empty" if not entries else f"holds no {resumable}"
        )
        raise RunDirError(
            f"nothing to resume: {path} {where}; run without --resume to start a new run"
            + (" (with --overwrite to replace what is there)" if entries else "")
        )
    if not entries:
        return "new"
    if not overwrite:
        hint = " or --resume to continue it" if resumable else ""
        raise RunDirError(
            f"{flag} {path} is not empty ({_describe(entries)}); pass --overwrite to "
            f"replace it{hint}, or choose another directory"
        )
    if not is_lopt_run_dir(path):
        raise RunDirError(
            f"{flag} {path} is not empty and was not written by lopt ({_describe(entries)}); "
            "refusing to delete it with --overwrite: choose another directory"
        )
    return "overwrite"


def prepare_run_dir(
    path: str | os.PathLike,
    *,
    command: str,
    resume: bool = False,
    overwrite: bool = False,
    resumable: str | None = None,
    flag: str = "--out",
) -> Path:
    """Check ``path`` against the contract above, make it ready, and return it.

    A new directory is created (with parents); ``--overwrite`` empties an lopt run directory;
    ``--resume`` keeps everything. The marker file :data:`MARKER` is (re)written except on
    resume.

    Args:
        path: the output directory (``--out``).
        command: the command writing it (recorded in the marker, e.g. ``"train"``).
        resume: the user asked to continue the run in ``path``.
        overwrite: the user asked to replace the run in ``path``.
        resumable: the file a resume needs (``None``: this command cannot resume, and
            ``resume=True`` is refused).
        flag: how the user named ``path`` (for messages).

    Raises:
        RunDirError: one line, see the module docstring.
    """
    path = Path(path)
    action = check_run_dir(
        path, command=command, resume=resume, overwrite=overwrite, resumable=resumable, flag=flag
    )
    if action == "resume":
        return path
    if action == "overwrite":
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {flag} {path}: {err.strerror or err}") from None
    from lopt import __version__
    from lopt.utils.io import atomic_write_json

    atomic_write_json(
        path / MARKER,
        {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "lopt_version": __version__},
    )
    return path


def add_run_dir_flags(parser, *, resumable: bool = False) -> None:
    """The ``--overwrite`` (and, where a command can resume, ``--resume``) flags."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (only a directory an lopt command wrote)",
    )
    if resumable:
        parser.add_argument(
            "--resume", action="store_true", help="continue the run in --out from its checkpoint"
        )


def prepare_continuable_run_dir(
    path: str | os.PathLike,
    *,
    command: str,
    overwrite: bool,
    resumable: str,
    flag: str = "--out",
) -> tuple[Path, bool]:
    """For commands that continue their own unfinished work without being asked
    (``lopt evaluate``, ``lopt reproduce``): a directory that this command wrote -- its
    marker names ``command`` and it holds ``resumable`` -- is continued; anything else follows
    the contract of :func:`prepare_run_dir` (``--overwrite`` starts afresh).

    Returns ``(path, continued)``.
    """
    path = Path(path)
    if not overwrite and (path / resumable).is_file():
        try:
            marker = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            marker = {}
        if marker.get("command") == command:
            return prepare_run_dir(path, command=command, resume=True, resumable=resumable,
                                   flag=flag), True
    return prepare_run_dir(path, command=command, overwrite=overwrite, flag=flag), False
