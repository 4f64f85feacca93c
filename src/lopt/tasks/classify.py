"""Classification tasks shared by the MLP and CNN modules.

A classifier task captures its dataset as device arrays; ``sample_batch`` draws indices
with ``jax.random`` (inside ``jit``), and the configuration (init scale, activation index,
data-subset offset) may be traced, so that one same-shape family vmaps over many of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lopt.tasks.base import Task, clip_meta_loss
from lopt.tasks.data.base import Dataset

#: Activations a configuration can pick by index (``cfg["act"]``).
ACTIVATIONS: tuple[tuple[str, Callable], ...] = (
    ("relu", nn.relu),
    ("tanh", jnp.tanh),
    ("gelu", nn.gelu),
    ("silu", nn.silu),
)
ACTIVATION_NAMES = tuple(name for name, _ in ACTIVATIONS)


def activation(index) -> Callable:
    """The activation for ``index``: a direct call for a Python int, ``lax.switch`` if traced."""
    if isinstance(index, int):
        return ACTIVATIONS[index][1]
    fns = [fn for _, fn in ACTIVATIONS]
    return lambda x: jax.lax.switch(jnp.asarray(index, jnp.int32), fns, x)


def activation_index(name: str) -> int:
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATION_NAMES)}")
    return ACTIVATION_NAMES.index(name)


def layer_widths(widths, what: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``widths`` as a tuple of ints, each >= 1 (and at least one unless ``allow_empty``)."""
    widths = tuple(int(w) for w in widths)
    if (not widths and not allow_empty) or any(w < 1 for w in widths):
        need = "positive ints" if allow_empty else "a non-empty tuple of positive ints"
        raise ValueError(f"{what} must be {need}, got {widths}")
    return widths


def default_name(data: DeviceDataset, kind: str, widths: tuple[int, ...], batch_size) -> str:
    """``<dataset>_<kind>_<widths>_b<batch>``, e.g. ``digits_mlp_32_b128`` (group names)."""
    return f"{data.name}_{kind}_{'x'.join(map(str, widths)) or 'linear'}_b{batch_size or 'full'}"


def classifier_bound(num_classes: int) -> float:
    """Meta-loss bound: 1.5 x the loss of a uniform guess (spec section 4)."""
    return 1.5 * math.log(num_classes)


@dataclass(frozen=True, eq=False)
class DeviceDataset:
    """A :class:`Dataset` moved to the device once (tasks capture these arrays)."""

    name: str
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DeviceDataset:
        return cls(
            name=ds.name,
            x_train=jnp.asarray(ds.x_train, jnp.float32),
            y_train=jnp.asarray(ds.y_train, jnp.int32),
            x_test=jnp.asarray(ds.x_test, jnp.float32),
            y_test=jnp.asarray(ds.y_test, jnp.int32),
            num_classes=ds.num_classes,
        )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])


def classifier_task(
    name: str,
    model: nn.Module,
    data: DeviceDataset,
    batch_size: int | None,
    act_index,
    init_scale=1.0,
    data_offset=0,
    subset_size: int | None = None,
) -> Task:
    """Build a classifier :class:`Task`.

    Args:
        model: a linen module called as ``model(x, act)`` returning logits.
        act_index: Python int (static) or traced int (selected with ``lax.switch``).
        init_scale: multiplies every initial parameter (may be traced).
        data_offset, subset_size: batches are drawn from the ``subset_size`` training
            examples starting at ``data_offset`` (wrapping); ``data_offset`` may be traced,
            ``subset_size`` is static (``None``: the whole training set).
        batch_size: ``None`` means full-batch training: every "batch" is the whole training
            set (deterministic gradients; the key is ignored).
    """
    n = data.num_train
    sub = n if subset_size is None else int(subset_size)
    if not 1 <= sub <= n:
        raise ValueError(f"subset_size must be in [1, {n}], got {subset_size}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
    act = activation(act_index)
    bound = classifier_bound(data.num_classes)
    x0 = data.x_train[:1]

    def init(key):
        params = model.init(key, x0, act)
        return jax.tree.map(lambda p: p * jnp.asarray(init_scale, p.dtype), params)

    def sample_batch(key):
        if batch_size is None:
            return {"x": data.x_train, "y": data.y_train}
        idx = jax.random.randint(key, (batch_size,), 0, sub)
        idx = (idx + jnp.asarray(data_offset, jnp.int32)) % n
        return {"x": data.x_train[idx], "y": data.y_train[idx]}

    def xent(params, x, y):
        logits = model.apply(params, x, act)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss(params, batch):
        return xent(params, batch["x"], batch["y"])

    def eval_loss(params, key):
        del key  # the whole held-out split: deterministic
        return xent(params, data.x_test, data.y_test)

    def eval_accuracy(params, key):
        del key
        logits = model.apply(params, data.x_test, act)
        return jnp.mean(jnp.argmax(logits, axis=-1) == data.y_test).astype(jnp.float32)

    return Task(
        name=name,
        init=init,
        sample_batch=sample_batch,
        loss=loss,
        normalizer=lambda value: clip_meta_loss(value, bound),
        eval_loss=eval_loss if data.x_test.shape[0] else None,
        eval_accuracy=eval_accuracy if data.x_test.shape[0] else None,
    )


@dataclass(frozen=True, eq=False)
class ClassifierFamily:
    """Same-shape classifiers differing in init scale, activation and data subset.

    Static (shape-fixing) fields: the model, dataset and batch size. The array configuration
    is ``{"log_init_scale": f32, "act": i32, "data_offset": i32}``.
    """

    name: str
    model: nn.Module
    data: DeviceDataset
    batch_size: int
    init_scale_range: tuple[float, float] = (0.5, 2.0)
    activations: tuple[str, ...] = ACTIVATION_NAMES
    subset_fraction: float = 0.8

    def __post_init__(self):
        lo, hi = self.init_scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"init_scale_range must satisfy 0 < lo <= hi, got {lo, hi}")
        if not self.activations:
            raise ValueError("activations must not be empty")
        for a in self.activations:
            activation_index(a)
        if not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def sample(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        lo, hi = self.init_scale_range
        allowed = jnp.asarray([activation_index(a) for a in self.activations], jnp.int32)
        return {
            "log_init_scale": jax.random.uniform(k1, (), jnp.float32, math.log(lo), math.log(hi)),
            "act": allowed[jax.random.randint(k2, (), 0, len(self.activations))],
            "data_offset": jax.random.randint(k3, (), 0, self.data.num_train),
        }

    def task(self, cfg) -> Task:
        return classifier_task(
            self.name,
            self.model,
            self.data,
            self.batch_size,
            # one allowed activation: a static choice, so the program computes only that one
            # (a traced index under vmap evaluates every candidate and its derivative)
            act_index=(activation_index(self.activations[0]) if len(self.activations) == 1
                       else cfg["act"]),
            init_scale=jnp.exp(cfg["log_init_scale"]),
            data_offset=cfg["data_offset"],
            subset_size=max(1, int(self.subset_fraction * self.data.num_train)),
        )
