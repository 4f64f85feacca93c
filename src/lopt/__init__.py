"""lopt: learned optimizers that are stable by design.

Quick start::

    import lopt, optax
    opt = lopt.star()                 # best shipped STAR weights, an optax transformation
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)   # loss= is optional
    params = optax.apply_updates(params, updates)

Public entry points are imported lazily so that ``lopt --help`` does not pay for JAX.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "star": ("lopt.optimizers.pretrained", "star"),
    "blackbox": ("lopt.optimizers.pretrained", "blackbox"),
    "save_meta_params": ("lopt.optimizers.io", "save_meta_params"),
    "load_meta_params": ("lopt.optimizers.io", "load_meta_params"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lopt' has no attribute {name!r}")
