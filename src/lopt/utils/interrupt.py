"""Ctrl-C that stops long work at a safe point instead of inside a running XLA computation.

``with graceful_interrupt() as stop:`` installs a SIGINT handler for the duration of the block:
the first Ctrl-C only sets ``stop`` (loops poll ``stop.is_set()`` between jitted calls, then
write what they have and say so); a second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside
the main thread (where Python cannot install signal handlers) it is a flag nobody sets.

Blocks nest: an inner ``graceful_interrupt`` (a library loop) inside an outer one (the command
that called it) shares the outer flag, so a Ctrl-C that came before the inner block started is
not lost, and the outer message is the one printed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


@contextlib.contextmanager
def graceful_interrupt(message: str | None = None):
    """Yield a :class:`threading.Event` set by the first SIGINT; ``message`` is printed to
    stderr when that happens (e.g. "finishing the current step; Ctrl-C again to abort")."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    outer = getattr(signal.getsignal(signal.SIGINT), "lopt_stop", None)
    if outer is not None:
        yield outer
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if message:
            print(message, file=sys.stderr, flush=True)

    handler.lopt_stop = stop  # how a nested block finds this flag
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old)
