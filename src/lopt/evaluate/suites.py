"""Named evaluation suites: which tasks, for how many steps. Defined here and nowhere else.

A suite task is a name from the task registry (``lopt tasks``), optionally ``NAME@K`` for a
fixed member of a family or mixture: the task :func:`lopt.tasks.sample_task` draws with
``PRNGKey(K)`` (the same every time, so suites are fixed sets of problems).

* ``in-distribution``: MLP classifiers on 8x8 digits and MNIST-1D like the ones STAR is
  meta-trained on (``configs/star_shipped.toml``), including fixed draws of the training families
  (activation, init scale and data subset vary), run for the meta-training horizon.
* ``ood``: tasks unlike the meta-training ones -- a wider/deeper MLP on each dataset, the
  digits CNN, the digits autoencoder (MSE), the character LSTM and transformer language models
  on Python's own source, and quadratics -- at the same horizon.
* ``long-horizon``: the in-distribution tasks at 10x the meta-training horizon.
* ``validation``: tasks in none of the suites above and not in the shipped STAR's meta-training
  mix -- draws of other families, and models larger or deeper than the mix's -- for choosing a
  recipe or a theta without tuning on the suites that are reported (a trend seen on the few
  ood tasks, such as "larger models want smaller steps", did not hold here; model card).
* ``quick``: a small subset (2 in-distribution + 2 unlike) at a short horizon, for smoke tests
  and ``lopt reproduce --quick``.
"""

from __future__ import annotations

import dataclasses
import re

#: The horizon (inner steps) the shipped optimizers are meta-trained for; suites are built
#: around it.
META_TRAINING_HORIZON = 1000
LONG_HORIZON_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class SuiteTask:
    """One problem of a suite: ``task`` (``NAME`` or ``NAME@K``) trained for ``steps`` steps."""

    task: str
    steps: int

    @property
    def label(self) -> str:
        return f"{self.task} x{self.steps}"


def _tasks(names: tuple[str, ...], steps: int) -> tuple[SuiteTask, ...]:
    return tuple(SuiteTask(n, steps) for n in names)


IN_DISTRIBUTION_TASKS = (
    "digits_mlp",
    "mnist1d_mlp",
    "digits_mlp_family@1",
    "digits_mlp_family@2",
    "mnist1d_mlp_family@1",
    "mnist1d_mlp_family@2",
)
OOD_TASKS = (
    "digits_mlp_deep",
    "mnist1d_mlp_wide",
    "digits_cnn",
    "digits_autoencoder",
    "text_lstm",
    "text_transformer",
    "quadratic",
    "nqm",
)

VALIDATION_TASKS = (
    "mlp_broad@1",
    "mlp_broad@5",
    "mlp_broad@7",
    "mlp_broad@14",
    "cnn_family@0",
    "cnn_family@7",
    "digits_mlp_fullbatch",
    "digits_mlp_512",
    "mnist1d_mlp_deep",
    "digits_cnn_wide",
    "mnist1d_autoencoder",
    "text_lstm_wide",
    "text_transformer_wide",
)

SUITES: dict[str, tuple[SuiteTask, ...]] = {
    "in-distribution": _tasks(IN_DISTRIBUTION_TASKS, META_TRAINING_HORIZON),
    "ood": _tasks(OOD_TASKS, META_TRAINING_HORIZON),
    "long-horizon": _tasks(
        IN_DISTRIBUTION_TASKS[:4], LONG_HORIZON_FACTOR * META_TRAINING_HORIZON
    ),
    "validation": _tasks(VALIDATION_TASKS, META_TRAINING_HORIZON),
    "quick": (
        SuiteTask("digits_mlp", 300),
        SuiteTask("mnist1d_mlp", 300),
        SuiteTask("digits_autoencoder", 300),
        SuiteTask("quadratic", 300),
    ),
}

SUITE_DESCRIPTIONS = {
    "in-distribution": "MLPs on digits / MNIST-1D like the meta-training tasks, "
    f"{META_TRAINING_HORIZON} steps",
    "ood": "unlike the meta-training tasks (wide/deep MLPs, CNN, autoencoder, LSTM and "
    f"transformer LMs, quadratics), {META_TRAINING_HORIZON} steps",
    "long-horizon": f"in-distribution tasks at {LONG_HORIZON_FACTOR}x the horizon "
    f"({LONG_HORIZON_FACTOR * META_TRAINING_HORIZON} steps)",
    "validation": "for choosing recipes, in no reported suite and not in the shipped mix "
    f"(other families' draws; larger/deeper MLPs, CNN, LMs), {META_TRAINING_HORIZON} steps",
    "quick": "4 small tasks at 300 steps (smoke test)",
}

_MEMBER = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(@(?P<k>\d+))?$")


class SuiteError(ValueError):
    """An unknown suite or task name (the message lists the valid ones)."""


def suite(name: str) -> tuple[SuiteTask, ...]:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]


def parse_tasks(text: str, steps: int) -> tuple[SuiteTask, ...]:
    """A custom comma list ``a,b@3,c`` at ``steps`` steps each (names checked)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SuiteError("--tasks is empty; give a comma list of task names")
    for item in items:
        check_task_name(item)
    return _tasks(tuple(items), steps)


def check_task_name(text: str) -> None:
    from lopt.tasks import names

    match = _MEMBER.match(text)
    if not match or match["name"] not in names():
        raise SuiteError(
            f"unknown task {text!r}; valid: {', '.join(names())} (NAME@K picks member K of a "
            "family or mixture)"
        )


def build_task(text: str):
    """The concrete :class:`~lopt.tasks.base.Task` of ``NAME`` or ``NAME@K``."""
    import jax

    from lopt.tasks import get, sample_task

    check_task_name(text)
    match = _MEMBER.match(text)
    k = int(match["k"]) if match["k"] is not None else 0
    return sample_task(get(match["name"]), jax.random.PRNGKey(k))
