"""The blackbox Adafactor-MLP learned optimizer (Metz et al. 2022), the paper's baseline."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from lopt.optimizers.learned import AdafactorMLPBase


@dataclasses.dataclass(frozen=True)
class Blackbox(AdafactorMLPBase):
    """``phi <- phi - lambda_s * d * exp(lambda_0 * m)``, with ``lambda_s = lambda_0 = 1e-3``.

    ``d`` and ``m`` are the two outputs of the per-coordinate MLP over the 39 features of
    :mod:`lopt.optimizers.features`. No descent term, no preconditioning, no weight decay: at
    meta-initialization the update is a small random function of the features, and everything
    useful must be meta-learned. This is the "unstable by default" baseline that STAR fixes.
    """

    name: ClassVar[str] = "blackbox"

    def leaf_delta(self, outs, p, g, st):
        del p, g, st
        return -self.blackbox_step(outs)
