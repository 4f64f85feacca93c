"""MLP classifiers (flax linen) on flattened inputs: 8x8 digits, MNIST-1D or user data."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopt.tasks.base import Task, clip_meta_loss
from lopt.tasks.classify import (
    ClassifierFamily,
    DeviceDataset,
    activation_index,
    classifier_task,
    default_name,
    layer_widths,
)
from lopt.tasks.classify import activation as activation_fn
from lopt.tasks.data.base import Dataset


class MLP(nn.Module):
    """``x -> Dense(h1) -> act -> ... -> Dense(num_classes)`` on the flattened input.

    Also the autoencoder (``num_classes`` = input size, linear output).
    """

    hidden: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x, act):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def _device(data: Dataset | DeviceDataset) -> DeviceDataset:
    """Device arrays with inputs flattened once (gathers from 2-d arrays are cheaper)."""
    data = data if isinstance(data, DeviceDataset) else DeviceDataset.from_dataset(data)
    if data.x_train.ndim == 2:
        return data
    dim = math.prod(data.x_train.shape[1:])  # not -1: that fails on an empty test split
    return dataclasses.replace(
        data,
        x_train=data.x_train.reshape(data.x_train.shape[0], dim),
        x_test=data.x_test.reshape(data.x_test.shape[0], dim),
    )


def mlp_task(
    data: Dataset | DeviceDataset,
    hidden: tuple[int, ...] = (32,),
    batch_size: int | None = 128,
    activation: str = "relu",
    init_scale: float = 1.0,
    name: str | None = None,
) -> Task:
    """One fixed MLP classification task (full training set, static activation).

    ``batch_size=None`` trains full-batch (deterministic gradients).
    """
    data = _device(data)
    hidden = layer_widths(hidden, "hidden widths", allow_empty=True)
    return classifier_task(
        name or default_name(data, "mlp", hidden, batch_size),
        MLP(hidden, data.num_classes),
        data,
        batch_size,
        act_index=activation_index(activation),
        init_scale=init_scale,
    )


def mlp_family(
    data: Dataset | DeviceDataset,
    hidden: tuple[int, ...] = (32,),
    batch_size: int = 128,
    name: str | None = None,
    **kwargs,
) -> ClassifierFamily:
    """A same-shape MLP family: init scale, activation and data subset vary per config."""
    data = _device(data)
    hidden = layer_widths(hidden, "hidden widths", allow_empty=True)
    return ClassifierFamily(
        name=name or default_name(data, "mlp", hidden, batch_size),
        model=MLP(hidden, data.num_classes),
        data=data,
        batch_size=batch_size,
        **kwargs,
    )


def autoencoder_task(
    data: Dataset | DeviceDataset,
    hidden: tuple[int, ...] = (32,),
    batch_size: int = 128,
    activation: str = "relu",
    name: str | None = None,
) -> Task:
    """MLP autoencoder with a mean-squared reconstruction loss (labels unused).

    Normalizer: the loss divided by the loss of always predicting the mean input (the
    "chance level" of a regression), clipped to ``[0, 1.5]``; non-finite -> 1.5.
    """
    data = _device(data)
    hidden = layer_widths(hidden, "hidden widths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim = int(data.x_train.shape[1])
    model = MLP(hidden, dim)  # linear output layer of the input's size
    act = activation_fn(activation_index(activation))
    x_train, x_test = data.x_train, data.x_test
    baseline = float(jnp.mean((x_train - x_train.mean(axis=0)) ** 2))
    n = x_train.shape[0]

    def mse(params, x):
        return jnp.mean((model.apply(params, x, act) - x) ** 2)

    return Task(
        name=name or f"{data.name}_autoencoder_{'x'.join(map(str, hidden))}",
        init=lambda key: model.init(key, x_train[:1], act),
        sample_batch=lambda key: {"x": x_train[jax.random.randint(key, (batch_size,), 0, n)]},
        loss=lambda params, batch: mse(params, batch["x"]),
        normalizer=lambda value: clip_meta_loss(value / baseline, 1.5),
        # like the classifiers: no held-out split, no eval_loss (the mean of nothing is NaN)
        eval_loss=(lambda params, key: mse(params, x_test)) if x_test.shape[0] else None,
    )
