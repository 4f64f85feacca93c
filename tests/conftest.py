"""Shared test set-up: XLA's compile effort for the test process, and data caches kept out of
the user's home folder."""

import os

import pytest

#: XLA's LLVM optimization level for the programs the tests compile (XLA's default is 2).
TEST_XLA_OPT_LEVEL = "0"
_OPT_FLAG = "--xla_backend_optimization_level"

# The fast suite is compile-bound: most tests compile a learned optimizer's update for a few
# small tensors and run it a few dozen times. At level 0 it took 4m57 instead of 5m50 on 2 cores
# (CPU time 9m00 instead of 10m40; one run each, back to back, in a fresh clone's environment;
# the first CI-style run that day took 6m12 at level 0). The level changes how code is optimized,
# not the algorithm, but it can change last bits, as another CPU would: 30 steps of the shipped
# STAR on digits differ by up to 8.5e-7 between level 0 and the default. The fast suite passes
# at both levels; CI runs the slow suite at XLA's default level, as users compile. The flag must
# be set before JAX starts its CPU backend, so here, before any test module imports JAX;
# programs lopt compiles with its own options (meta-training, evaluations) keep their level,
# and an ``--xla_backend_optimization_level`` already in ``XLA_FLAGS`` wins.
if _OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} {_OPT_FLAG}={TEST_XLA_OPT_LEVEL}".strip())


@pytest.fixture(scope="session", autouse=True)
def _lopt_cache(tmp_path_factory):
    """Point ``$LOPT_CACHE`` at a per-session temporary folder (MNIST-1D arrays go there)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("lopt_cache")
    mp.setenv("LOPT_CACHE", str(path))
    yield path
    mp.undo()
