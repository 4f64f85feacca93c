"""Meta-training: gradient estimators (PES, ES, truncated backprop), unrolls, the outer loop.

Layering (one job per module, data flows one way)::

    config.py      MetaTrainConfig / EstimatorConfig: typed, validated, TOML + overrides
    unroll.py      UnrollState and GroupUnroll: one truncation = scan over inner steps,
                   vmap over particles (antithetic pair) and slots; resets and evaluation
                   (of TaskDraws: the held-out tasks, drawn once with the slots' own)
    estimators.py  PES / ES / TruncatedBackprop behind init(theta, key) and
                   step(theta, est_state, key) -> (meta_grad, est_state, diagnostics)
    checkpoint.py  atomic checkpoints of any pytree, checked against a template on load
    trainer.py     MetaTrainer: clipped Adam on theta, metrics.jsonl, fixed held-out
                   evaluation with best.safetensors, checkpoints, Ctrl-C, exact resume;
                   estimates from an EstimateSource (LocalEstimates, or Ray workers in
                   lopt.distributed)

Programmatic use::

    from lopt.metatrain import MetaTrainConfig, MetaTrainer
    cfg = MetaTrainConfig.from_toml("configs/star_digits.toml", outer_steps=500)
    result = MetaTrainer(cfg, "runs/star").run(progress=True)
"""

from lopt.utils.lazy import lazy_getattr

# Imported on first use (PEP 562), so that reading a config (``lopt meta-train --help``) does not
# start JAX.
_LAZY = {
    "EstimatorConfig": "config",
    "MetaTrainConfig": "config",
    "ES": "estimators",
    "PES": "estimators",
    "GradientEstimator": "estimators",
    "TruncatedBackprop": "estimators",
    "make_estimator": "estimators",
    "MetaTrainer": "trainer",
    "EstimateSource": "trainer",
    "LocalEstimates": "trainer",
    "GroupUnroll": "unroll",
    "TaskDraw": "unroll",
    "UnrollState": "unroll",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("lopt.metatrain", _LAZY)
