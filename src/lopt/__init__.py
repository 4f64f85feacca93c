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

from lopt.utils.lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "star": "optimizers.pretrained",
    "blackbox": "optimizers.pretrained",
    "save_meta_params": "optimizers.io",
    "load_meta_params": "optimizers.io",
}

__all__ = ["__version__", *_LAZY]

__getattr__ = lazy_getattr("lopt", _LAZY)
