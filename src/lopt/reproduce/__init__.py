"""The paper's experiments E1-E5 at small scale, end to end (``lopt reproduce``).

E1 stability on the noisy quadratic model; E2 meta-training speed of STAR vs the blackbox;
E3 long horizons; E4 out-of-distribution tasks vs tuned Adam; E5 ablations. Budgets in
:mod:`lopt.reproduce.budget`; orchestration in :mod:`lopt.reproduce.runner`.
"""

from lopt.reproduce.budget import BUDGETS, FULL, QUICK, Budget
from lopt.reproduce.runner import EXPERIMENTS, reproduce

__all__ = ["BUDGETS", "EXPERIMENTS", "FULL", "QUICK", "Budget", "reproduce"]
