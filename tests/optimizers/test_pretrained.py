"""Shipped weights: found in the package, checksum-verified against their model card."""

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt.optimizers import STAR, MetaParamsError, pretrained


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A weights folder holding STAR weights (alpha 0.05) and a model card with their sha256."""
    opt = STAR(alpha=0.05)
    theta = opt.init(jax.random.PRNGKey(1))
    path = lopt.save_meta_params(tmp_path / "star.safetensors", theta, opt)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "star.json").write_text(json.dumps({"sha256": digest}))
    monkeypatch.setattr(pretrained, "weights_dir", lambda: tmp_path)
    return path, theta


def test_star_uses_the_shipped_weights(shipped):
    _, theta = shipped
    got, opt = pretrained.resolve("star")
    assert opt.alpha == 0.05
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(theta), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert lopt.star() is not None


def test_step_scale_multiplies_the_shipped_update(shipped):
    """``lopt.star(step_scale=s)``: the shipped weights' whole change times ``s``, weight decay
    included (the fixture's weights are STAR's defaults, weight decay on)."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: jnp.cos(3.0 * p), params)
    plain, scaled = lopt.star(), lopt.star(step_scale=0.25)
    up, _ = plain.update(grads, plain.init(params), params)
    us, _ = scaled.update(grads, scaled.init(params), params)
    for name in params:
        assert float(jnp.abs(up[name]).max()) > 0
        np.testing.assert_allclose(us[name], 0.25 * np.asarray(up[name]), rtol=1e-6)
    with pytest.raises(ValueError, match="step_scale"):
        lopt.star(step_scale=0.0)


def test_an_explicit_step_scale_replaces_the_saved_one(tmp_path):
    """``step_scale`` given to ``lopt.star`` wins over the file's, 1 included; left out, the
    file's own value stays."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
    grads = {"w": jnp.cos(3.0 * params["w"])}
    theta = STAR().init(jax.random.PRNGKey(0))
    unit = lopt.save_meta_params(tmp_path / "unit.safetensors", theta, STAR())
    half = lopt.save_meta_params(tmp_path / "half.safetensors", theta, STAR(step_scale=0.5))

    def update(tx):
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    plain = update(lopt.star(unit))
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(update(lopt.star(half)), 0.5 * plain, rtol=1e-6)
    np.testing.assert_allclose(update(lopt.star(half, step_scale=1.0)), plain, rtol=1e-6)


def test_a_tampered_copy_is_refused(shipped):
    path, _ = shipped
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(MetaParamsError, match="sha256 .* does not match"):
        lopt.star()


def test_weights_without_a_card_are_refused(shipped, tmp_path):
    (tmp_path / "star.json").unlink()
    with pytest.raises(MetaParamsError, match="model card"):
        pretrained.resolve("star")


def test_no_shipped_weights_means_meta_initialization(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "weights_dir", lambda: tmp_path)
    theta, opt = pretrained.resolve("blackbox")
    ref = opt.init(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", pretrained.KINDS)
def test_the_real_shipped_weights_match_their_card(kind):
    path = pretrained.shipped_weights(kind)
    if path is None:
        pytest.skip(f"no {kind} weights ship in this checkout")
    card = pretrained.model_card(kind)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == card["sha256"]
    theta, opt = pretrained.resolve(kind)
    # a card written before a switch existed lacks it: the switch's default (off) is implied
    assert opt.name == kind and type(opt).from_config(card["optimizer"]["config"]) == opt


@pytest.mark.parametrize("kind", pretrained.KINDS)
def test_model_card_json_notes_follow_the_markdown(kind):
    """The machine-readable card carries the same notes as the card people read (its "## Notes"
    section, as ``scripts/ship_weights.py`` writes it): edits to one must reach the other."""
    card = pretrained.model_card(kind)
    if card is None:
        pytest.skip(f"no {kind} weights ship")
    markdown = (pretrained.weights_dir() / f"{kind}.md").read_text()
    head, sep, notes = markdown.partition("## Notes\n\n")
    assert sep, f"{kind}.md has no Notes section"
    assert card["notes"].rstrip("\n") == notes.rstrip("\n"), (
        f"{kind}.json's notes differ from {kind}.md's: "
        f"python scripts/ship_weights.py --kind {kind} --sync-notes")
