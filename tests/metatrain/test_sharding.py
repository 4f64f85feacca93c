"""The slot axis is sharded over local devices; results equal the single-device run.

XLA_FLAGS must be set before JAX starts, so the two-device run is a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.trainer import MetaTrainer

HERE = Path(__file__).resolve().parent
CFG = dict(
    tasks="quadratic", truncation=4, horizon_min=8, horizon_max=16, num_slots=8,
    outer_lr=0.05, outer_steps=3, eval_every=0, checkpoint_every=10, seed=5,
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {here!r})
    import jax
    import numpy as np
    from conftest import MomentumLO, QuadraticFamily
    from lopt.metatrain.config import MetaTrainConfig
    from lopt.metatrain.trainer import MetaTrainer

    assert jax.local_device_count() == 2, jax.devices()
    t = MetaTrainer(MetaTrainConfig(**{cfg!r}), {out!r}, optimizer=MomentumLO(),
                    task=QuadraticFamily(), save_theta=lambda *a: None)
    state = t._compile(t.init_state())
    leaf = jax.tree.leaves(state["est_state"])[0]
    n_dev = len(leaf.sharding.device_set)
    shard_rows = leaf.addressable_shards[0].data.shape[0]
    out = t.run()
    print(json.dumps({{"devices": n_dev, "shard_rows": shard_rows,
                      "theta": {{k: float(v) for k, v in out["theta"].items()}}}}))
    """
)


def test_two_devices_shard_slots_and_match_one_device(tmp_path, momentum_lo, quad_family):
    script = SCRIPT.format(here=str(HERE), cfg=CFG, out=str(tmp_path / "two"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["devices"] == 2 and two["shard_rows"] == 4  # 8 slots split in halves

    one = MetaTrainer(MetaTrainConfig(**CFG), tmp_path / "one", optimizer=momentum_lo,
                      task=quad_family, save_theta=lambda *a: None).run()
    for k, v in two["theta"].items():
        np.testing.assert_allclose(v, float(one["theta"][k]), rtol=1e-5, atol=1e-7)
