"""Saving and loading meta-parameters: exact round trips, clear errors on bad files."""

import json
import re
import struct

import jax
import numpy as np
import pytest

import lopt
from lopt.optimizers import STAR, Blackbox, MetaParamsError


def perturbed(opt, seed=0):
    theta = opt.init(jax.random.PRNGKey(seed))
    return jax.tree.map(lambda x: x + 0.01 * np.arange(x.size).reshape(x.shape), theta)


@pytest.mark.parametrize(
    "opt",
    [STAR(), Blackbox(), STAR(hidden_sizes=(8, 8), nominal="adam", precondition=False,
                              nominal_controller=True, decay_mode="raw", weight_decay=0.01)],
    ids=["star", "blackbox", "star-custom"],
)
def test_round_trip_is_exact(tmp_path, opt):
    theta = perturbed(opt)
    path = lopt.save_meta_params(tmp_path / "theta.safetensors", theta, opt,
                                 extra_metadata={"outer_steps": 3})
    loaded, opt2 = lopt.load_meta_params(path)
    assert opt2 == opt
    assert jax.tree.structure(loaded) == jax.tree.structure(theta)
    jax.tree.map(np.testing.assert_array_equal, loaded, theta)


def test_star_front_end_loads_a_path(tmp_path):
    opt = STAR()
    path = lopt.save_meta_params(tmp_path / "t.safetensors", perturbed(opt), opt)
    tx = lopt.star(path)
    params = {"w": np.ones((2, 2), np.float32)}
    grads = {"w": np.array([[0.5, -1.0], [2.0, 0.1]], np.float32)}

    def first_update(tx):
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    # the file's weights are used: same update as those weights, not as meta-init
    np.testing.assert_array_equal(first_update(tx), first_update(opt.as_optax(perturbed(opt))))
    meta_init = opt.as_optax(opt.init(jax.random.PRNGKey(0)))
    assert not np.array_equal(first_update(tx), first_update(meta_init))
    with pytest.raises(ValueError, match="not blackbox"):
        lopt.blackbox(path)


def test_truncated_file(tmp_path):
    opt = STAR()
    path = lopt.save_meta_params(tmp_path / "t.safetensors", opt.init(jax.random.PRNGKey(0)), opt)
    data = path.read_bytes()
    for cut in (4, 20, len(data) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(MetaParamsError, match="truncated"):
            lopt.load_meta_params(bad)


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 8)
    with pytest.raises(MetaParamsError, match="corrupt"):
        lopt.load_meta_params(bad)
    with pytest.raises(MetaParamsError, match="file not found"):
        lopt.load_meta_params(tmp_path / "missing.safetensors")


def _rewrite_metadata(path, out, **changes):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_wrong_architecture_names_the_problem(tmp_path):
    opt = STAR()
    path = lopt.save_meta_params(tmp_path / "t.safetensors", opt.init(jax.random.PRNGKey(0)), opt)
    cfg = json.loads(lopt.optimizers.io.read_metadata(path)["config"])
    cfg["hidden_sizes"] = [8, 8]
    bad = tmp_path / "arch.safetensors"
    _rewrite_metadata(path, bad, config=json.dumps(cfg))
    expected = r"mlp/b0. has shape \(4,\), the architecture needs \(8,\)"
    with pytest.raises(MetaParamsError, match=expected):
        lopt.load_meta_params(bad)
    cfg["nominal_controller"] = "yes please"
    cfg["nominal"] = "lion"
    _rewrite_metadata(path, bad, config=json.dumps(cfg))
    with pytest.raises(MetaParamsError, match="invalid star config"):
        lopt.load_meta_params(bad)
    _rewrite_metadata(path, bad, optimizer="velo")
    with pytest.raises(MetaParamsError, match="unknown optimizer 'velo'"):
        lopt.load_meta_params(bad)
    _rewrite_metadata(path, bad, format="something-else")
    with pytest.raises(MetaParamsError, match="not an lopt meta-parameter file"):
        lopt.load_meta_params(bad)


def test_saving_wrong_shapes_or_nonfinite_is_refused(tmp_path):
    opt = STAR()
    theta = opt.init(jax.random.PRNGKey(0))
    with pytest.raises(MetaParamsError, match="shape"):
        lopt.save_meta_params(tmp_path / "a.safetensors", Blackbox(hidden_sizes=(3, 3)).init(
            jax.random.PRNGKey(0)), opt)
    bad = {**theta, "decays": {**theta["decays"], "rms": np.array(np.nan, np.float32)}}
    with pytest.raises(MetaParamsError, match="non-finite"):
        lopt.save_meta_params(tmp_path / "b.safetensors", bad, opt)
    assert not (tmp_path / "b.safetensors").exists()


def test_text_file_renamed_safetensors_is_named_for_what_it_is(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("these are my notes, not weights\n" * 20)
    with pytest.raises(MetaParamsError) as err:
        lopt.load_meta_params(bad)
    msg = str(err.value)
    assert "not a safetensors file" in msg and "renamed" in msg
    assert not re.search(r"\d{10,}", msg)  # no 19-digit "header length" read from text
