"""Small CNN classifiers (flax linen) on image datasets such as the 8x8 digits."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from lopt.tasks.base import Task
from lopt.tasks.classify import (
    ClassifierFamily,
    DeviceDataset,
    activation_index,
    classifier_task,
    default_name,
    layer_widths,
)
from lopt.tasks.data.base import Dataset


class PatchConv(nn.Module):
    """3x3 "SAME" convolution written as shifted slices + one matmul (im2col).

    Numerically a standard convolution (kernel ``(3, 3, C_in, C_out)``, lecun-normal init,
    zero bias), but on a CPU XLA runs it (and its gradient) about 8x faster than
    ``nn.Conv`` at these tiny sizes, which is what meta-training spends its time on.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        _, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        s = self.stride
        oh, ow = -(-h // s), -(-w // s)
        # XLA's "SAME": total padding (out - 1) * s + 3 - in, the smaller half before.
        top = max((oh - 1) * s + 3 - h, 0) // 2
        left = max((ow - 1) * s + 3 - w, 0) // 2
        xp = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        r0, c0, rh, rw = 2 - top, 2 - left, (oh - 1) * s + 1, (ow - 1) * s + 1
        patches = jnp.concatenate(
            [
                xp[:, r0 + i : r0 + i + rh : s, c0 + j : c0 + j + rw : s]
                for i in range(3)
                for j in range(3)
            ],
            axis=-1,
        )
        return patches @ kernel.reshape(9 * c, self.features) + bias


class CNN(nn.Module):
    """3x3 convolutions (the first stride 1, the rest stride 2), global mean pool, dense head."""

    channels: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x, act):
        if x.ndim == 3:
            x = x[..., None]
        for i, c in enumerate(self.channels):
            stride = 1 if i == 0 else 2
            x = act(PatchConv(c, stride)(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def _device(data: Dataset | DeviceDataset) -> DeviceDataset:
    if isinstance(data, DeviceDataset):
        return data
    if len(data.input_shape) not in (2, 3):
        raise ValueError(f"CNN tasks need image data (H, W[, C]), got {data.input_shape}")
    return DeviceDataset.from_dataset(data)


def cnn_task(
    data: Dataset | DeviceDataset,
    channels: tuple[int, ...] = (8, 16),
    batch_size: int = 128,
    activation: str = "relu",
    init_scale: float = 1.0,
    name: str | None = None,
) -> Task:
    data = _device(data)
    channels = layer_widths(channels, "channels")
    return classifier_task(
        name or default_name(data, "cnn", channels, batch_size),
        CNN(channels, data.num_classes),
        data,
        batch_size,
        act_index=activation_index(activation),
        init_scale=init_scale,
    )


def cnn_family(
    data: Dataset | DeviceDataset,
    channels: tuple[int, ...] = (8, 16),
    batch_size: int = 128,
    name: str | None = None,
    **kwargs,
) -> ClassifierFamily:
    data = _device(data)
    channels = layer_widths(channels, "channels")
    return ClassifierFamily(
        name=name or default_name(data, "cnn", channels, batch_size),
        model=CNN(channels, data.num_classes),
        data=data,
        batch_size=batch_size,
        **kwargs,
    )
