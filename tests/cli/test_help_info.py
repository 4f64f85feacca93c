"""Help that teaches, flags named like config keys, and what ``lopt info`` says about weights."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json

import pytest

from lopt.cli.main import build_parser, main


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_flag_has_help_and_its_default_and_no_raw_markup(name):
    parser = _subparsers()[name]
    text = parser.format_help()
    assert "`" not in text, f"raw backticks in lopt {name} --help"
    flat = " ".join(text.split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"lopt {name}: {action.option_strings or action.dest} has no help"
        default = action.default
        shown = default is None or default is False or default == [] or not action.option_strings
        assert shown or f"(default: {default})" in flat or "default" in action.help, (
            f"lopt {name} {action.option_strings}: default {default!r} not shown"
        )


def test_jargon_is_said_in_words():
    meta = _subparsers()["meta-train"].format_help()
    assert "persistent evolution strategies (PES)" in " ".join(meta.split())
    stab = " ".join(_subparsers()["stability"].format_help().split())
    assert "experiment E1" in stab and "noisy quadratic model (NQM" in stab


def test_meta_train_flags_are_the_config_keys_and_old_spellings_still_work():
    from lopt.cli import meta_train
    from lopt.metatrain.config import MetaTrainConfig
    from lopt.metatrain.trainer import CHECKPOINT, LEGACY_CHECKPOINT

    assert (meta_train.CHECKPOINT, meta_train.LEGACY_CHECKPOINT) == (CHECKPOINT, LEGACY_CHECKPOINT)
    parser = _subparsers()["meta-train"]
    flags = {s for a in parser._actions for s in a.option_strings}
    for field in dataclasses.fields(MetaTrainConfig):
        if field.name != "optimizer_kwargs":  # that one is --opt KEY=VALUE
            assert "--" + field.name.replace("_", "-") in flags, field.name
    old = parser.parse_args(["--out", "x", "--slots", "4", "--lr", "0.1", "--clip", "2"])
    new = parser.parse_args(["--out", "x", "--num-slots", "4", "--outer-lr", "0.1",
                             "--clip-norm", "2"])
    assert (old.num_slots, old.outer_lr, old.clip_norm) == (4, 0.1, 2.0)
    assert vars(old) == vars(new)


def test_toml_keys_are_the_flag_names(tmp_path, capsys):
    from lopt.cli.meta_train import build_config

    toml = tmp_path / "c.toml"
    toml.write_text('optimizer = "star"\ntasks = "quadratic"\nnum_slots = 3\nclip_norm = 0.5\n'
                    "antithetic = false\n")
    parser = _subparsers()["meta-train"]
    cfg = build_config(parser.parse_args(["--out", "x", "--config", str(toml)]))
    assert (cfg.num_slots, cfg.clip_norm, cfg.antithetic) == (3, 0.5, False)
    cfg = build_config(parser.parse_args(["--out", "x", "--config", str(toml), "--num-slots",
                                          "5", "--antithetic"]))
    assert (cfg.num_slots, cfg.antithetic) == (5, True)  # flags win over the file
    toml.write_text("slots = 4\n")
    with pytest.raises(SystemExit) as exc:
        main(["meta-train", "--config", str(toml), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "'slots' -> 'num_slots'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_info_without_shipped_weights_says_meta_initialization(capsys, monkeypatch):
    from lopt.optimizers import pretrained

    monkeypatch.setattr(pretrained, "shipped_weights", lambda kind: None)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "lopt 0.1.0" in out and "devices: " in out
    assert "star: meta-initialization: no weights shipped" in out
    assert "blackbox: meta-initialization: no weights shipped" in out


def test_info_reports_weights_path_sha256_and_model_card(tmp_path, capsys, monkeypatch):
    import jax

    import lopt
    from lopt.optimizers import STAR, pretrained

    opt = STAR()
    path = lopt.save_meta_params(tmp_path / "star.safetensors", opt.init(jax.random.key(0)), opt)
    (tmp_path / "star.md").write_text("# STAR digits\nmeta-trained 300 outer steps\n")
    monkeypatch.setattr(pretrained, "shipped_weights",
                        lambda kind: path if kind == "star" else None)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    suites = {"in-distribution": {"summary": {"median": 1.8123}},
              "ood": {"summary": {"median": 0.3}}, "long-horizon": {"summary": None}}
    (tmp_path / "star.json").write_text(json.dumps({"sha256": sha,
                                                    "evaluation": {"suites": suites}}))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"star: weights {path}" in out and f"sha256 {sha} (matches the model card)" in out
    assert "meta-trained 300 outer steps" in out
    assert "median speedup over tuned Adam: in-distribution 1.81, ood 0.30\n" in out
    assert "blackbox: meta-initialization: no weights shipped" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["optimizers"]["star"]["weights"] == {"path": str(path), "sha256": sha}
    assert info["optimizers"]["star"]["model_card"]["path"] == str(tmp_path / "star.md")
    assert info["optimizers"]["star"]["verified"] is True
    assert info["optimizers"]["blackbox"]["weights"] is None
    (tmp_path / "star.json").write_text(json.dumps({"sha256": "0" * 64}))  # a tampered copy
    assert main(["info"]) == 0
    assert "DOES NOT match the model card" in capsys.readouterr().out
