"""What every run writes next to its outputs so that it can be reproduced."""

from __future__ import annotations

import platform
import sys
from importlib import metadata


def package_versions(names=("lopt", "jax", "jaxlib", "optax", "flax", "numpy", "scipy")) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment_info() -> dict:
    """Python, platform, package versions and JAX devices."""
    import jax

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": package_versions(),
        "devices": [str(d) for d in jax.devices()],
    }
