"""Scratch memory for the per-parameter update, reused across parameters and steps.

Eager torch allocates every temporary afresh, and the CPU allocator hands large blocks back to
the operating system: the ``(K, *shape)`` feature buffer of a 784x1024 matrix (51 MB) was
mapped and page-faulted in again at every step (measured ~15k page faults per step on a
1M-parameter MLP). The update instead carves its large temporaries out of one flat buffer per
device, kept between steps: 30-40 floats per coordinate of the largest parameter tensor (the
peak the temporaries reach anyway), plus up to half again as growth slack; released with the
optimizer.
"""

from __future__ import annotations

import math

import torch

ALIGN = 16  # floats: 64 bytes


class Workspace:
    """A bump allocator over one float32 buffer per device; :meth:`reset` before each tensor."""

    def __init__(self):
        self._buffers: dict = {}
        self._device = None
        self._offset = 0

    def reset(self, device) -> None:
        """Start a new parameter's update: every earlier view may be overwritten from now on."""
        self._device = torch.device(device)
        self._offset = 0

    def take(self, *shape: int) -> torch.Tensor:
        """An uninitialized float32 tensor of ``shape``, valid until the next :meth:`reset`."""
        n = math.prod(shape)
        buf = self._buffers.get(self._device)
        if buf is None or self._offset + n > buf.numel():
            # Grow: views handed out so far keep the old buffer alive until they are dropped.
            size = max(self._offset + n, 0 if buf is None else buf.numel() * 3 // 2)
            buf = torch.empty(size, dtype=torch.float32, device=self._device)
            self._buffers[self._device] = buf
            self._offset = 0
        out = buf[self._offset:self._offset + n].view(shape)
        self._offset += -(-n // ALIGN) * ALIGN  # next view starts on a cache line
        return out
