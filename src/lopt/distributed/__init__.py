"""Distributed meta-training on Ray: estimator workers across machines, one learner.

    config.py   DistributedConfig: workers, staleness bound, estimates per outer step, ...
    worker.py   EstimatorWorker: a worker's slots and compiled estimator step (a Ray actor)
    learner.py  RayEstimates: the MetaTrainer's estimate source that pools worker estimates,
                drops stale ones and re-creates dead workers

The learner is the ordinary :class:`~lopt.metatrain.MetaTrainer` (same update, evaluation,
checkpoints, metrics and resume) with ``source=RayEstimates(...)``. Ray is an optional extra
(``pip install -e ".[distributed]"``); importing this package does not import Ray. See
``docs/distributed.md``.

    from lopt.distributed import DistributedConfig, RayEstimates
    from lopt.metatrain import MetaTrainConfig, MetaTrainer
    trainer = MetaTrainer(cfg, "runs/x", source=RayEstimates(DistributedConfig(workers=2)))
    trainer.run()
"""

from lopt.distributed.config import DistributedConfig
from lopt.distributed.learner import RayEstimates
from lopt.distributed.worker import EstimatorWorker, WorkerSpec

__all__ = ["DistributedConfig", "EstimatorWorker", "RayEstimates", "WorkerSpec"]
