"""Meta-training: gradient estimators (PES, ES, truncated backprop), unrolls, the outer loop.

Layering (one job per module, data flows one way)::

    config.py      MetaTrainConfig / EstimatorConfig: typed, validated, TOML + overrides
    unroll.py      UnrollState and GroupUnroll: one truncation = scan over inner steps,
                   vmap over particles (antithetic pair) and slots; resets and evaluation
    estimators.py  PES / ES / TruncatedBackprop behind init(theta, key) and
                   step(theta, est_state, key) -> (meta_grad, est_state, diagnostics)
    checkpoint.py  atomic checkpoints of any pytree, checked against a template on load
    trainer.py     MetaTrainer: clipped Adam on theta, metrics.jsonl, fixed held-out
                   evaluation with best.safetensors, checkpoints, Ctrl-C, exact resume

Programmatic use::

    from lopt.metatrain import MetaTrainConfig, MetaTrainer
    cfg = MetaTrainConfig.from_toml("configs/star_digits.toml", outer_steps=500)
    result = MetaTrainer(cfg, "runs/star").run(progress=True)
"""

from lopt.metatrain.config import EstimatorConfig, MetaTrainConfig
from lopt.metatrain.estimators import ES, PES, GradientEstimator, TruncatedBackprop, make_estimator
from lopt.metatrain.trainer import MetaTrainer
from lopt.metatrain.unroll import GroupUnroll, UnrollState

__all__ = [
    "ES",
    "PES",
    "EstimatorConfig",
    "GradientEstimator",
    "GroupUnroll",
    "MetaTrainConfig",
    "MetaTrainer",
    "TruncatedBackprop",
    "UnrollState",
    "make_estimator",
]
