"""Named tasks, families and mixtures: ``get(name)``, ``names()``, ``describe(name)``.

Entries are built lazily on first ``get`` and cached per process, so repeated lookups return
the same object (and jitted functions closed over it compile once). Builders read only
offline data: bundled digits, locally generated MNIST-1D, the stdlib's own sources.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from lopt.tasks.base import Task, TaskFamily, TaskMixture


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    build: Callable[[], Task | TaskFamily | TaskMixture]
    kind: str  # "task", "family" or "mixture"


@functools.cache
def _digits():
    """Digits on the device, shared by every digits task of this process."""
    from lopt.tasks.classify import DeviceDataset
    from lopt.tasks.data import load_digits

    return DeviceDataset.from_dataset(load_digits())


@functools.cache
def _mnist1d():
    from lopt.tasks.classify import DeviceDataset
    from lopt.tasks.data import load_mnist1d

    return DeviceDataset.from_dataset(load_mnist1d())


def _text():
    from lopt.tasks.data import load_stdlib_text

    return load_stdlib_text()


def _quadratic():
    from lopt.tasks.quadratic import quadratic_task

    return quadratic_task()


def _nqm():
    from lopt.tasks.quadratic import nqm_task

    return nqm_task()


def _quadratic_family():
    from lopt.tasks.quadratic import QuadraticFamily

    return QuadraticFamily()


def _digits_mlp():
    from lopt.tasks.mlp import mlp_task

    return mlp_task(_digits(), hidden=(32,), batch_size=128, name="digits_mlp")


def _mnist1d_mlp():
    from lopt.tasks.mlp import mlp_task

    return mlp_task(_mnist1d(), hidden=(32,), batch_size=128, name="mnist1d_mlp")


def _digits_cnn():
    from lopt.tasks.cnn import cnn_task

    return cnn_task(_digits(), channels=(8, 16), batch_size=128, name="digits_cnn")


def _digits_mlp_deep():
    from lopt.tasks.mlp import mlp_task

    return mlp_task(_digits(), hidden=(128, 128, 128), batch_size=128, name="digits_mlp_deep")


def _mnist1d_mlp_wide():
    from lopt.tasks.mlp import mlp_task

    return mlp_task(_mnist1d(), hidden=(256, 256), batch_size=128, name="mnist1d_mlp_wide")


def _digits_mlp_fullbatch():
    from lopt.tasks.mlp import mlp_task

    return mlp_task(_digits(), hidden=(32,), batch_size=None, name="digits_mlp_fullbatch")


def _digits_autoencoder():
    from lopt.tasks.mlp import autoencoder_task

    return autoencoder_task(_digits(), hidden=(32,), batch_size=128, name="digits_autoencoder")


def _digits_mlp_family():
    from lopt.tasks.mlp import mlp_family

    return mlp_family(_digits(), hidden=(32,), batch_size=128, name="digits_mlp_family")


def _mnist1d_mlp_family():
    from lopt.tasks.mlp import mlp_family

    return mlp_family(_mnist1d(), hidden=(32,), batch_size=128, name="mnist1d_mlp_family")


#: (hidden widths, batch size) of the mlp_family shape groups; each appears per dataset.
MLP_FAMILY_SHAPES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((32,), 128),
    ((64, 32), 64),
    ((128,), 32),
)

#: (channels, batch size) of the cnn_family shape groups (8x8 digits).
CNN_FAMILY_SHAPES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((8, 16), 128),
    ((16, 32), 64),
    ((8, 16, 32), 32),
)


def _mlp_family():
    from lopt.tasks.mlp import mlp_family

    groups = tuple(
        mlp_family(data, hidden=hidden, batch_size=batch)
        for data in (_digits(), _mnist1d())
        for hidden, batch in MLP_FAMILY_SHAPES
    )
    return TaskMixture("mlp_family", groups)


#: (hidden widths, batch size, dataset) of the extra MLP groups of ``mlp_broad``: deeper and
#: wider than any ``mlp_family`` group, on the dataset the ood suite's deep/wide task does not use.
MLP_BROAD_EXTRA_SHAPES: tuple[tuple[tuple[int, ...], int, str], ...] = (
    ((64, 64, 64), 128, "mnist1d"),
    ((256,), 128, "digits"),
)


def _mlp_broad():
    """``mlp_family`` plus deeper/wider MLPs and MNIST-1D autoencoders (MSE).

    Why: the shipped STAR meta-trained on ``mlp_family`` alone stalls at a noise floor on the
    ood suite's wider/deeper MLPs and on the (digits) autoencoder; this mix shows it such tasks
    without using the ood suite's own ones (other dataset or shape).
    """
    from lopt.tasks.base import FixedTaskFamily
    from lopt.tasks.mlp import autoencoder_task, mlp_family

    data = {"digits": _digits(), "mnist1d": _mnist1d()}
    extra = tuple(
        mlp_family(data[ds], hidden=hidden, batch_size=batch)
        for hidden, batch, ds in MLP_BROAD_EXTRA_SHAPES
    )
    autoencoders = tuple(
        FixedTaskFamily(autoencoder_task(data["mnist1d"], hidden=hidden, batch_size=128))
        for hidden in ((16,), (64, 32))
    )
    return TaskMixture("mlp_broad", get("mlp_family").groups + extra + autoencoders)


def _mlp_family_rescaled(name: str = "mlp_family_rescaled", identity_fraction: float = 0.0):
    """``mlp_family`` with every group under a random per-tensor rescaling (scales in
    [1/10, 10]; see :mod:`lopt.tasks.augment`), a draw left unscaled with probability
    ``identity_fraction``."""
    from lopt.tasks.augment import RescaledFamily

    return TaskMixture(
        name,
        tuple(
            RescaledFamily(g, identity_fraction=identity_fraction)
            for g in get("mlp_family").groups
        ),
    )


def _mlp_family_small():
    return TaskMixture("mlp_family_small", (get("digits_mlp_family"), get("mnist1d_mlp_family")))


def _cnn_family():
    from lopt.tasks.cnn import cnn_family

    groups = tuple(
        cnn_family(_digits(), channels=channels, batch_size=batch)
        for channels, batch in CNN_FAMILY_SHAPES
    )
    return TaskMixture("cnn_family", groups)


def _text_lstm():
    from lopt.tasks.lm import lstm_task

    return lstm_task(_text())


def _text_transformer():
    from lopt.tasks.lm import transformer_task

    return transformer_task(_text())


def _validation_task(name: str):
    """The tasks of the ``validation`` suite (:mod:`lopt.evaluate.suites`): models larger or
    deeper than the meta-training mix's, in no other suite, for choosing recipes and weights
    without looking at the suites that are reported."""
    from lopt.tasks.cnn import cnn_task
    from lopt.tasks.lm import lstm_task, transformer_task
    from lopt.tasks.mlp import autoencoder_task, mlp_task

    builders = {
        "digits_mlp_512": lambda: mlp_task(_digits(), hidden=(512,), batch_size=128, name=name),
        "mnist1d_mlp_deep": lambda: mlp_task(
            _mnist1d(), hidden=(128, 128, 128), batch_size=128, name=name),
        "digits_cnn_wide": lambda: cnn_task(
            _digits(), channels=(32, 64), batch_size=128, name=name),
        "mnist1d_autoencoder": lambda: autoencoder_task(
            _mnist1d(), hidden=(128,), batch_size=128, name=name),
        "text_lstm_wide": lambda: lstm_task(_text(), embed=16, hidden=128, name=name),
        "text_transformer_wide": lambda: transformer_task(
            _text(), dim=64, heads=4, layers=1, name=name),
    }
    return builders[name]()


_ENTRIES: tuple[Entry, ...] = (
    Entry("quadratic", "16-d deterministic quadratic, eigenvalues 1e-2..1", _quadratic, "task"),
    Entry("nqm", "16-d noisy quadratic model (fresh minimum ~ N(0, 0.3^2 I) per step)",
          _nqm, "task"),
    Entry("quadratic_family", "NQMs with curvature scale log-uniform in [0.1, 10]",
          _quadratic_family, "family"),
    Entry("digits_mlp", "MLP 64-32-10 (relu) on sklearn 8x8 digits, batch 128",
          _digits_mlp, "task"),
    Entry("digits_mlp_deep", "MLP 64-128-128-128-10 (relu) on 8x8 digits, batch 128",
          _digits_mlp_deep, "task"),
    Entry("mnist1d_mlp", "MLP 40-32-10 (relu) on MNIST-1D (generated offline), batch 128",
          _mnist1d_mlp, "task"),
    Entry("mnist1d_mlp_wide", "MLP 40-256-256-10 (relu) on MNIST-1D, batch 128 (wider, deeper)",
          _mnist1d_mlp_wide, "task"),
    Entry("digits_mlp_fullbatch", "MLP 64-32-10 (relu) on 8x8 digits, full-batch gradients",
          _digits_mlp_fullbatch, "task"),
    Entry("digits_autoencoder", "MLP autoencoder 64-32-64 on 8x8 digits, MSE loss, batch 128",
          _digits_autoencoder, "task"),
    Entry("digits_cnn", "CNN conv8-conv16(s2)-meanpool-10 on 8x8 digits, batch 128",
          _digits_cnn, "task"),
    Entry("text_lstm", "char LSTM LM (embed 32, hidden 64) on stdlib source, 16x32 tokens",
          _text_lstm, "task"),
    Entry("text_transformer", "char transformer LM (2 layers, dim 32) on stdlib source",
          _text_transformer, "task"),
    Entry("digits_mlp_512", "MLP 64-512-10 (relu) on 8x8 digits, batch 128 (validation suite)",
          functools.partial(_validation_task, "digits_mlp_512"), "task"),
    Entry("mnist1d_mlp_deep", "MLP 40-128-128-128-10 (relu) on MNIST-1D, batch 128 (validation)",
          functools.partial(_validation_task, "mnist1d_mlp_deep"), "task"),
    Entry("digits_cnn_wide", "CNN conv32-conv64(s2)-meanpool-10 on 8x8 digits (validation)",
          functools.partial(_validation_task, "digits_cnn_wide"), "task"),
    Entry("mnist1d_autoencoder", "MLP autoencoder 40-128-40 on MNIST-1D, MSE (validation)",
          functools.partial(_validation_task, "mnist1d_autoencoder"), "task"),
    Entry("text_lstm_wide", "char LSTM LM (embed 16, hidden 128) on stdlib source (validation)",
          functools.partial(_validation_task, "text_lstm_wide"), "task"),
    Entry("text_transformer_wide",
          "char transformer LM (1 layer, dim 64, 4 heads) on stdlib source (validation)",
          functools.partial(_validation_task, "text_transformer_wide"), "task"),
    Entry("digits_mlp_family", "digits MLP 64-32-10: init scale, activation, data subset vary",
          _digits_mlp_family, "family"),
    Entry("mnist1d_mlp_family", "MNIST-1D MLP 40-32-10: init scale, activation, subset vary",
          _mnist1d_mlp_family, "family"),
    Entry("mlp_family", "digits + MNIST-1D MLPs, 3 width/depth/batch groups each (mixture)",
          _mlp_family, "mixture"),
    Entry("mlp_broad", "mlp_family + deeper/wider MLPs + MNIST-1D autoencoders (10 groups)",
          _mlp_broad, "mixture"),
    Entry("mlp_family_rescaled",
          "mlp_family under random per-tensor parameter rescaling in [1/10, 10] (augmentation)",
          _mlp_family_rescaled, "mixture"),
    Entry("mlp_family_half_rescaled",
          "mlp_family, half of the draws under random per-tensor rescaling in [1/10, 10]",
          functools.partial(_mlp_family_rescaled, "mlp_family_half_rescaled", 0.5), "mixture"),
    Entry("mlp_family_small", "digits + MNIST-1D MLPs of one shape each (2 groups, fast compile)",
          _mlp_family_small, "mixture"),
    Entry("cnn_family", "digits CNNs, 3 channel/depth/batch groups (mixture)",
          _cnn_family, "mixture"),
)
_BY_NAME = {e.name: e for e in _ENTRIES}


def names() -> tuple[str, ...]:
    """All registered names, in listing order."""
    return tuple(_BY_NAME)


def entry(name: str) -> Entry:
    if name not in _BY_NAME:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(names())}")
    return _BY_NAME[name]


def describe(name: str) -> str:
    """The one-line description shown by ``lopt tasks``."""
    return entry(name).description


@functools.cache
def get(name: str) -> Task | TaskFamily | TaskMixture:
    """The task, family or mixture registered as ``name`` (built once per process).

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    return entry(name).build()
