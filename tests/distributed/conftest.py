"""Fixtures of the distributed tests: one local Ray instance for all of them, and the engine
tests' stand-ins (noisy quadratic family, two-parameter LO) made picklable for Ray workers."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

STANDINS = "lopt_test_standins"


def _load_standins():
    """``tests/metatrain/conftest.py`` as an importable module of its own (not a conftest)."""
    if STANDINS not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "metatrain" / "conftest.py"
        spec = importlib.util.spec_from_file_location(STANDINS, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[STANDINS] = module
        spec.loader.exec_module(module)
    return sys.modules[STANDINS]


standins = _load_standins()
# Some engine tests ``from conftest import QuadraticFamily``; under pytest's rootdir imports
# the last conftest imported answers to that name, so this one offers the same stand-ins.
QuadraticFamily, MomentumLO = standins.QuadraticFamily, standins.MomentumLO


def pickle_by_value(module) -> None:
    """Ray workers cannot import test modules: ship their classes by value instead."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(module)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs (one per worker), started once for these tests."""
    ray = pytest.importorskip("ray")
    pickle_by_value(standins)
    started = not ray.is_initialized()
    if started:
        with warnings.catch_warnings():  # JAX warns of os.fork; Ray forks and execs at once
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def momentum_lo():
    return standins.MomentumLO()


@pytest.fixture
def quad_family():
    return standins.QuadraticFamily()
