"""How big a reproduction is: the quick budget (minutes, the README's main job) and the full one.

Every number an experiment uses comes from a :class:`Budget`, so a report can state its setup
and a reader can re-run it exactly.
"""

from __future__ import annotations

import dataclasses

#: Ablation variants of experiment E5 (spec section 5): name -> (optimizer, switches).
#: "nominal + blackbox" keeps the blackbox's own multiplier (1e-3): without preconditioning
#: STAR's 1e-4 would make the learned term negligible rather than ablate preconditioning.
ABLATIONS: dict[str, tuple[str, dict]] = {
    "nominal only": ("star", {"step_multiplier": 0.0, "weight_decay": 0.0}),
    "blackbox only": ("blackbox", {}),
    "nominal + blackbox": (
        "star", {"precondition": False, "step_multiplier": 1e-3, "weight_decay": 0.0}
    ),
    "nominal + preconditioned blackbox": ("star", {"weight_decay": 0.0}),
    "STAR (+ weight decay)": ("star", {}),
    "STAR + learned step size": ("star", {"step_size_controller": True}),
}
#: The two optimizers of E2-E4: the paper's STAR and its blackbox baseline.
STAR_VARIANT = "STAR (+ weight decay)"
BLACKBOX_VARIANT = "blackbox only"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of one reproduction.

    Attributes:
        name: ``quick`` or ``full``.
        family: the meta-training task family (registry name).
        seeds: meta-training seeds of E2 (STAR and the blackbox each); E5 uses the first.
        outer_steps, num_slots, truncation, horizon_min, horizon_max, sigma, outer_lr: the
            PES meta-training run (same for every optimizer: matched budget).
        eval_every, eval_tasks, eval_horizon: the fixed held-out evaluation during training.
        eval_seeds: seeds of the evaluations against tuned Adam (E3, E4, E5).
        in_distribution_tasks: fixed members of the family (``NAME@K``) for E3/E5.
        ood_tasks: tasks unlike the family, for E4 (each at ``horizon_max`` steps).
        long_horizon_factor: E3 trains for this many times ``horizon_max``.
        ablation_tasks: E5's long-horizon evaluation of every ablation variant.
        e1_outer_steps, e1_resolution: meta-learned linear optimizers and stability maps.
    """

    name: str
    family: str
    seeds: tuple[int, ...]
    outer_steps: int
    num_slots: int
    truncation: int
    horizon_min: int
    horizon_max: int
    eval_every: int
    eval_tasks: int
    eval_horizon: int
    eval_seeds: int
    in_distribution_tasks: tuple[str, ...]
    ood_tasks: tuple[str, ...]
    long_horizon_factor: int = 10
    ablation_tasks: tuple[str, ...] = ()
    sigma: float = 0.01
    outer_lr: float = 1e-3
    e1_outer_steps: int = 200
    e1_resolution: int = 40

    def metatrain_config(self, optimizer: str, switches: dict, seed: int):
        """The :class:`~lopt.metatrain.config.MetaTrainConfig` of one E2/E5 run."""
        from lopt.metatrain.config import MetaTrainConfig

        return MetaTrainConfig(
            optimizer=optimizer,
            optimizer_kwargs=dict(switches),
            tasks=self.family,
            estimator="pes",
            sigma=self.sigma,
            truncation=self.truncation,
            horizon_min=self.horizon_min,
            horizon_max=self.horizon_max,
            num_slots=self.num_slots,
            outer_lr=self.outer_lr,
            clip_norm=1.0,
            outer_steps=self.outer_steps,
            eval_every=self.eval_every,
            eval_tasks=self.eval_tasks,
            eval_horizon=self.eval_horizon,
            checkpoint_every=max(1, self.outer_steps // 4),
            seed=seed,
        )


QUICK = Budget(
    name="quick",
    family="digits_mlp_family",
    seeds=(0, 1, 2),
    outer_steps=200,
    num_slots=8,
    truncation=25,
    horizon_min=100,
    horizon_max=400,
    eval_every=20,
    eval_tasks=8,
    eval_horizon=300,
    eval_seeds=2,
    in_distribution_tasks=("digits_mlp_family@1", "digits_mlp_family@2"),
    ood_tasks=("digits_autoencoder", "quadratic", "mnist1d_mlp"),
    ablation_tasks=("digits_mlp_family@1",),
    e1_outer_steps=150,
    e1_resolution=30,
)

FULL = Budget(
    name="full",
    family="mlp_family_small",
    seeds=(0, 1, 2, 3, 4),
    outer_steps=2000,
    num_slots=8,
    truncation=50,
    horizon_min=200,
    horizon_max=2000,
    eval_every=100,
    eval_tasks=8,
    eval_horizon=1000,
    eval_seeds=3,
    in_distribution_tasks=(
        "digits_mlp_family@1", "digits_mlp_family@2", "mnist1d_mlp_family@1",
        "mnist1d_mlp_family@2",
    ),
    ood_tasks=(
        "digits_mlp_deep", "mnist1d_mlp_wide", "digits_cnn", "digits_autoencoder",
        "text_lstm", "text_transformer", "quadratic", "nqm",
    ),
    ablation_tasks=("digits_mlp_family@1", "mnist1d_mlp_family@1"),
    e1_outer_steps=1000,
    e1_resolution=80,
)

BUDGETS = {"quick": QUICK, "full": FULL}
