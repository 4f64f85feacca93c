"""DistributedConfig: bad settings fail before any work; slots split over workers."""

from __future__ import annotations

import pytest

from lopt.distributed.config import DistributedConfig


def test_defaults_and_slot_split():
    cfg = DistributedConfig(workers=3)
    assert cfg.per_step == 3 and cfg.staleness == 0
    assert cfg.worker_slots(8) == (3, 3, 2)  # 8 = 3 + 3 + 2, first workers get the remainder
    assert cfg.worker_slots(3) == (1, 1, 1)
    assert DistributedConfig(workers=1).worker_slots(8) == (8,)
    assert DistributedConfig(workers=2, staleness=1, estimates_per_step=5).per_step == 5
    with pytest.raises(ValueError, match="at least as many task slots"):
        cfg.worker_slots(2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(workers=0), "workers must be a positive integer"),
        (dict(workers=2, cpus_per_worker=0), "cpus_per_worker must be a positive integer"),
        (dict(workers=2, staleness=-1), "staleness must be an integer >= 0"),
        (dict(workers=2, max_restarts=-1), "max_restarts must be an integer >= 0"),
        (dict(workers=2, estimates_per_step=0), "estimates_per_step must be a positive"),
        (dict(workers=2, estimates_per_step=3), "cannot exceed workers"),  # would deadlock
        (dict(workers=2, start_timeout_s=0), "start_timeout_s must be > 0"),
    ],
)
def test_bad_settings_fail(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistributedConfig(**kwargs)


def test_more_estimates_than_workers_allowed_when_asynchronous():
    assert DistributedConfig(workers=2, staleness=2, estimates_per_step=3).per_step == 3
