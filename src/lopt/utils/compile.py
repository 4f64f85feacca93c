"""How lopt compiles its own programs: a persistent cache, and XLA options tuned for compile time.

Compilation dominates short runs on a CPU: a PES meta-training step, its held-out evaluation
and the inner-training loop are large XLA programs (the learned optimizer's per-coordinate MLP
is unrolled into every step) that take seconds to a minute each to compile and often run for
less time than that. Two levers, both on by default and both with an off switch:

* **Persistent compilation cache.** Compiled programs are written to ``$LOPT_CACHE/jax``
  (default ``~/.cache/lopt/jax``), so a second run with the same shapes starts at once. lopt
  turns it on the first time it compiles one of its own programs or hands out an optimizer
  (``lopt.star()``), *unless* the process already chose a cache folder
  (``jax_compilation_cache_dir`` is set: lopt leaves it alone) or ``LOPT_NO_COMPILE_CACHE=1``.
  Note that it is JAX's process-wide cache: the rest of the process's programs are cached
  there too.
* **LLVM optimization level 1** for the programs lopt jits itself on a CPU (meta-training
  steps, evaluations, the inner-training loop): measured on digits MLP meta-training it cuts
  XLA compile time by ~40% (a PES step 12.2 -> 7.2 CPU-seconds) with the step running as fast
  (the small per-task tensors gain nothing from LLVM's heavier passes). Programs a user jits
  (``STAR.as_optax`` inside their own training step) keep XLA's defaults.
  ``LOPT_XLA_OPT_LEVEL=N`` picks another level (``default`` = XLA's own).

One more option is per optimizer: programs that run a learned optimizer which averages an MLP
output over whole tensors compile without XLA's CPU library reductions
(:func:`optimizer_options`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

#: LLVM optimization level of lopt's own CPU programs (XLA's default is 2; see module doc).
DEFAULT_OPT_LEVEL = 1
#: programs that compile faster than this are not written to the persistent cache
MIN_CACHED_COMPILE_SECONDS = 0.5
#: XLA's CPU "library fusions" (YNNPACK): which kinds of operation it hands to the library
LIBRARY_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def _env_flag(name: str) -> bool:
    """An on/off environment switch: on when set to anything but empty or ``0``."""
    return os.environ.get(name, "0") not in ("", "0")


def cache_root() -> Path:
    """``$LOPT_CACHE`` or ``~/.cache/lopt`` (generated data and compiled programs live here)."""
    return Path(os.environ.get("LOPT_CACHE", Path.home() / ".cache" / "lopt"))


def enable_compilation_cache() -> bool:
    """Persist compiled XLA programs across runs in ``$LOPT_CACHE/jax``; True when on.

    Does nothing (and returns whether a cache is on) when ``LOPT_NO_COMPILE_CACHE`` is set to
    anything but ``0``, when the process already set ``jax_compilation_cache_dir`` itself, or
    when the folder cannot be created (a read-only home). Safe to call many times.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return True  # the user's (or an earlier call's) choice stands
    if _env_flag("LOPT_NO_COMPILE_CACHE"):
        return False
    folder = cache_root() / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECONDS)
    return True


def compiler_options() -> dict:
    """XLA options for lopt's own programs on the default backend (empty: XLA's defaults).

    Only CPU programs get a lower LLVM optimization level; ``LOPT_XLA_OPT_LEVEL`` overrides it
    (an integer 0-3, or ``default``).
    """
    import jax

    if jax.default_backend() != "cpu":
        return {}
    level = os.environ.get("LOPT_XLA_OPT_LEVEL", str(DEFAULT_OPT_LEVEL)).strip().lower()
    if level in ("", "default", "xla"):
        return {}
    if level not in ("0", "1", "2", "3"):
        raise ValueError(f"LOPT_XLA_OPT_LEVEL must be 0, 1, 2, 3 or 'default', got {level!r}")
    return {"xla_backend_optimization_level": int(level)}


def optimizer_options(optimizer, *, differentiated: bool = False) -> dict:
    """Extra XLA options for programs that run ``optimizer``'s update (usually none).

    A learned optimizer that uses the mean of an MLP output over each tensor
    (``averages_outputs_per_tensor``: STAR's learned step size, as shipped) gets XLA's CPU
    library reductions turned off. With them, XLA hands that mean and the MLP's last layer to
    one library call whose inputs, one per hidden unit, each become a loop of their own that
    recomputes the features and the first layer (4 passes over memory instead of 1). Measured
    on the 2-core CPU: the shipped recipe's PES meta-training 13.7k -> 19.8k inner steps/s
    (``benchmarks/metatrain_throughput.py``), its update on a 1M-parameter MLP 13.2 -> 9.2 ms;
    programs without such a mean ran no faster and the 6-group mixture compiled no faster, so
    they keep XLA's defaults. Empty where this jaxlib does not know the option.

    ``differentiated=True`` (programs that backpropagate through the update: TBPTT
    meta-training) turns them off for every learned optimizer: the derivative's reductions,
    handed to the library, took ~40% of a TBPTT step (STAR on a digits MLP, 8 slots,
    truncation 50: 0.35 -> 0.23 s per outer step without them, measured on the 2-core CPU;
    the same PES step ran as fast either way).
    """
    import jax

    if not differentiated and not getattr(optimizer, "averages_outputs_per_tensor", False):
        return {}
    if jax.default_backend() != "cpu" or not _accepts_option(LIBRARY_FUSION_OPTION, ""):
        return {}
    return {LIBRARY_FUSION_OPTION: ""}


@functools.cache
def _accepts_option(name: str, value: str) -> bool:
    """Whether this jaxlib's XLA knows a compile option (it refuses names it does not know)."""
    import jax
    import numpy as np

    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(1)).compile()
    except Exception:  # XLA's own runtime error type, which differs between jaxlib versions
        return False
    return True


def optimizer_jit(optimizer, *, differentiated: bool = False):
    """:func:`jit` with ``optimizer``'s :func:`optimizer_options`, for the programs that run
    its update (meta-training steps, evaluations)."""
    options = optimizer_options(optimizer, differentiated=differentiated)
    return functools.partial(jit, extra_options=options)


def jit(fun, *, extra_options: dict | None = None, **kwargs):
    """``jax.jit`` for lopt's own programs: the persistent cache on, compile-time options set
    (``extra_options``, e.g. :func:`optimizer_options`, added to :func:`compiler_options`)."""
    import jax

    enable_compilation_cache()
    options = {**compiler_options(), **(extra_options or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)


def compile_concurrently(programs: list) -> list:
    """Compile several programs side by side; the compiled programs come back in order.

    Each entry is a lowered program (``jit(f).lower(...)``) or a function of no arguments that
    returns one. Functions are called (traced and lowered: Python, one at a time) in the
    caller's thread, and each program starts compiling in its own thread as soon as it is
    lowered, so the next program's tracing overlaps the compilation of the ones before it.
    Order them so that the longest compile starts early and no core idles while Python traces
    (the meta-trainer puts its small initialization first, then its step, then the evaluation).

    Why: XLA's compile releases the GIL, so on a multi-core CPU independent programs (a
    meta-training step and its held-out evaluation, each tens of seconds for a task mixture)
    compile in parallel instead of one after the other. Daemon threads: an interrupted process
    does not wait for a compile to finish. The persistent cache serves and stores these
    programs as it does ``jit``'s. Compiling side by side raises peak memory (the 6-group
    mixture's start-up: 3.1 GB instead of 2.2 GB); ``LOPT_COMPILE_SERIAL=1`` lowers and compiles
    one program at a time instead.
    """
    import threading

    def lowered(program):
        return program if hasattr(program, "compile") else program()

    if len(programs) < 2 or _env_flag("LOPT_COMPILE_SERIAL"):
        return [lowered(program).compile() for program in programs]
    results: list = [None] * len(programs)
    errors: list = [None] * len(programs)

    def work(i: int, low) -> None:
        try:
            results[i] = low.compile()
        except BaseException as exc:  # re-raised in the caller's thread
            errors[i] = exc

    threads = []
    for i, program in enumerate(programs):
        low = lowered(program)  # a failed lowering raises here; started compiles are daemons
        thread = threading.Thread(target=work, args=(i, low), daemon=True, name=f"lopt-compile-{i}")
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results
