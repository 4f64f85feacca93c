"""Config validation: a run that cannot work is refused before any JAX work, clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lopt.metatrain.config import EstimatorConfig, MetaTrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sigma=-0.1), "sigma must be > 0"),
        (dict(sigma=float("nan")), "sigma must be a finite"),
        (dict(truncation=500, horizon_min=200), "truncation \\(500\\) is longer"),
        (dict(estimator="reinforce"), "unknown estimator 'reinforce'; choose one of pes, es"),
        (dict(optimizer="adam"), "unknown optimizer 'adam'; choose one of star, blackbox"),
        (dict(num_slots=0), "num_slots"),
        (dict(horizon_min=300, horizon_max=200), "horizon_min <= horizon_max"),
        (dict(lr_schedule="cosine"), "decay_steps"),
        (dict(outer_lr=0.0), "outer_lr"),
        (dict(checkpoint_every=0), "checkpoint_every"),
    ],
)
def test_invalid_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainConfig(**kwargs)


def test_unknown_task_is_rejected_with_choices():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of .*digits_mlp_family"):
        MetaTrainConfig(tasks="nope").check_names()


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="unknown config keys \\['sigmaa'\\]"):
        MetaTrainConfig.from_dict({"sigmaa": 0.1})


def test_tbptt_allows_zero_sigma_and_particles():
    assert EstimatorConfig(estimator="tbptt", sigma=0.0).num_particles == 1
    assert EstimatorConfig(estimator="pes").num_particles == 2
    assert EstimatorConfig(estimator="es", antithetic=False).num_particles == 1


def test_toml_load_and_overrides(tmp_path):
    cfg = MetaTrainConfig.from_toml(CONFIGS / "star_digits.toml")
    assert cfg.optimizer == "star" and cfg.tasks == "digits_mlp_family"
    assert cfg.optimizer_kwargs == {"step_multiplier": 1e-4}
    cfg.check_names()
    over = MetaTrainConfig.from_toml(
        CONFIGS / "star_digits.toml", sigma=0.05, seed=None, optimizer_kwargs={"alpha": 2e-3}
    )
    assert over.sigma == 0.05 and over.seed == cfg.seed
    assert over.optimizer_kwargs == {"step_multiplier": 1e-4, "alpha": 2e-3}
    assert MetaTrainConfig.from_dict(over.to_dict()) == over
    MetaTrainConfig.from_toml(CONFIGS / "blackbox_digits.toml").check_names()


def test_every_shipped_config_loads_and_names_real_tasks_and_optimizers():
    files = sorted(CONFIGS.rglob("*.toml"))
    assert len(files) >= 8
    for path in files:
        cfg = MetaTrainConfig.from_toml(path)
        cfg.check_names()
