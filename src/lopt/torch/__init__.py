"""PyTorch front-end: :class:`STAR` and :class:`Blackbox` as ``torch.optim.Optimizer``.

Same meta-parameter files, architecture config, switches and update as the JAX optimizers
(a parity test holds them to 1e-5 over 200 steps). Needs the optional extra
``pip install "lopt[torch]"``; the rest of lopt never imports torch::

    import lopt.torch
    opt = lopt.torch.STAR(model.parameters())        # shipped weights, or meta-init
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "lopt.torch needs PyTorch, an optional extra: pip install 'lopt[torch]'"
    ) from err

from lopt.torch.optimizer import STAR, Blackbox, LearnedOptimizer
from lopt.torch.switches import UnsupportedConfigError

__all__ = ["STAR", "Blackbox", "LearnedOptimizer", "UnsupportedConfigError"]
