"""A character-level corpus present on every machine: the Python standard library's sources.

Files are found via ``sysconfig.get_paths()["stdlib"]``, sorted by relative path (so the
selection is deterministic for a given Python version), and read until ``max_bytes``.
Bytes are the tokens: ASCII (0-127) is kept and every other byte maps to 0 (NUL never occurs
in source text), so the vocabulary has 128 entries. The last ``eval_fraction`` of the corpus
is held out for ``eval_loss``.
"""

from __future__ import annotations

import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Token vocabulary size (ASCII).
VOCAB_SIZE = 128

#: Folders skipped: third-party packages, and test suites full of odd strings.
_SKIP_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """Token arrays (uint8) for training and held-out evaluation."""

    name: str
    train: np.ndarray
    test: np.ndarray
    vocab_size: int
    files: tuple[str, ...]

    def decode(self, tokens) -> str:
        return bytes(np.asarray(tokens, np.uint8).tolist()).decode("ascii", errors="replace")


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files in a deterministic (sorted) order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS and not d.startswith(".")]
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def encode(text: bytes) -> np.ndarray:
    """Bytes -> uint8 tokens in ``[0, 128)``; non-ASCII bytes become 0."""
    arr = np.frombuffer(text, np.uint8)
    return np.where(arr < VOCAB_SIZE, arr, 0).astype(np.uint8)


@functools.cache
def load_stdlib_text(
    max_bytes: int = 1_000_000, eval_fraction: float = 0.1, root: str | None = None
) -> TextCorpus:
    """Read up to ``max_bytes`` of stdlib source and split it into train / held-out tokens."""
    if max_bytes < 1000:
        raise ValueError(f"max_bytes must be >= 1000, got {max_bytes}")
    if not 0.0 < eval_fraction < 0.5:
        raise ValueError(f"eval_fraction must be in (0, 0.5), got {eval_fraction}")
    chunks, used, total = [], [], 0
    base = Path(root or sysconfig.get_paths()["stdlib"])
    for path in stdlib_files(base):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data[: max_bytes - total])
        used.append(path.relative_to(base).as_posix())
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    if total < 1000:
        raise FileNotFoundError(
            f"found only {total} bytes of Python source under {base}; expected the standard "
            "library's .py files there (sysconfig.get_paths()['stdlib'])"
        )
    tokens = encode(b"".join(chunks))
    tokens.flags.writeable = False  # cached per process and shared by callers
    # at least one held-out token: with n_test == 0, tokens[:-0] would be an empty train split
    n_test = max(1, int(len(tokens) * eval_fraction))
    return TextCorpus(
        name="stdlib_text",
        train=tokens[:-n_test],
        test=tokens[-n_test:],
        vocab_size=VOCAB_SIZE,
        files=tuple(used),
    )
