"""Shared test fixtures: keep generated-data caches out of the user's home folder."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _lopt_cache(tmp_path_factory):
    """Point ``$LOPT_CACHE`` at a per-session temporary folder (MNIST-1D arrays go there)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("lopt_cache")
    mp.setenv("LOPT_CACHE", str(path))
    yield path
    mp.undo()
