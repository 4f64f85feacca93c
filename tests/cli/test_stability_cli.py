"""``lopt stability``: JSON output, both argument forms, maps on disk and error exits."""

import json

import pytest

from lopt.cli.main import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_point_json_sgd_stable_and_unstable(capsys):
    argv = ["stability", "--optimizer", "sgd", "--lr", "0.1", "--curvature", "10", "--json"]
    out = _json(capsys, argv)
    assert out["spectral_radius"] == pytest.approx(0.0, abs=1e-12)
    assert out["stable"] is True
    assert out["optimizer"] == "sgd" and out["lr"] == 0.1 and out["curvature"] == 10.0
    out = _json(
        capsys, ["stability", "--optimizer", "sgd", "--lr", "0.3", "--curvature", "10", "--json"]
    )
    assert out["spectral_radius"] == pytest.approx(2.0) and out["stable"] is False


def test_point_json_flag_and_explicit_point_mode(capsys):
    argv = ["--optimizer", "momentum", "--lr", "0.1", "--curvature", "10", "--beta", "0.9"]
    a = _json(capsys, ["stability", *argv, "--json"])
    b = _json(capsys, ["stability", "point", *argv, "--json"])
    assert a["spectral_radius"] == pytest.approx(0.9**0.5) == b["spectral_radius"]
    assert a["beta"] == 0.9 and a["stable"] is True


def test_point_text_output(capsys):
    assert main(["stability", "--optimizer", "nesterov", "--lr", "1", "--curvature", "1"]) == 0
    text = capsys.readouterr().out
    assert "spectral radius:" in text and "stable: yes" in text


@pytest.mark.parametrize(
    "name,extra",
    [
        ("heavy_ball", ["--beta", "0.5"]),
        ("aggmo", ["--betas", "0,0.5,0.9"]),
        ("adam", ["--second-moment", "4", "--beta", "0"]),
    ],
)
def test_point_other_optimizers(capsys, name, extra):
    argv = ["stability", "--optimizer", name, "--lr", "0.5", "--curvature", "1,2", "--json"]
    out = _json(capsys, [*argv, *extra])
    assert 0 < out["spectral_radius"] < 1 and len(out["spectral_radius_per_curvature"]) == 2
    if name == "adam":  # lr / sqrt(v) = 0.25: eigenvalues 1 - 0.25 h
        assert out["spectral_radius"] == pytest.approx(0.75)


def test_weight_decay_shifts_sgd(capsys):
    argv = ["stability", "--optimizer", "sgd", "--lr", "0.01", "--curvature", "1", "--json"]
    base = _json(capsys, argv)["spectral_radius"]
    wd = _json(capsys, [*argv, "--weight-decay", "0.1"])["spectral_radius"]
    assert base - wd == pytest.approx(0.1)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--optimizer", "sgd", "--lr", "0.1", "--curvature", "-1"], "--curvature must be >= 0"),
        (["--optimizer", "momentum", "--lr", "0.1", "--curvature", "1", "--beta", "1"], "[0, 1)"),
        (["--optimizer", "momentum", "--lr", "0.1", "--curvature", "1", "--beta", "-0.1"], "beta"),
        (["--optimizer", "rmsprop2", "--lr", "0.1", "--curvature", "1"], "sgd, momentum"),
        (["--optimizer", "sgd", "--lr", "0", "--curvature", "1"], "--lr must be > 0"),
        (["--optimizer", "sgd", "--lr", "-1", "--curvature", "1"], "--lr must be > 0"),
        (["--optimizer", "sgd", "--curvature", "1"], "--lr is required"),
        (["--optimizer", "sgd", "--lr", "0.1"], "--curvature is required"),
        (["--lr", "0.1", "--curvature", "1"], "--optimizer is required"),
        (["map", "--optimizer", "sgd"], "--out"),
        (["--optimizer", "sgd", "--lr", "0.1", "--curvature", "x"], "number"),
        (["--optimizer", "sgd", "--lr", "0.1", "--curvature", "1", "--weight-decay", "2"], "decay"),
    ],
)
def test_invalid_input_exits_2_with_message(capsys, argv, needle):
    assert _exit_code(["stability", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_unknown_mode_is_an_argparse_error(capsys):
    assert _exit_code(["stability", "plot", "--optimizer", "sgd"]) == 2


def test_map_writes_figure_data_and_config(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["stability", "map", "--optimizer", "momentum", "--beta", "0.5", "--out", str(out)]
    assert main([*argv, "--resolution", "12", "--lr-range", "1e-2,1e2"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "map.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "map.json").read_text())
    assert len(data["x_values"]) == 12 and len(data["spectral_radius"]) == 12
    h = data["y_values"]
    assert sum(b is not None for b in data["boundary"]) >= 6  # the edge is inside the lr range
    for b, hi in zip(data["boundary"], h, strict=True):
        if b is not None:  # closed-form edge 2 (1 + beta) / ((1 - beta) h)
            assert b == pytest.approx(2 * 1.5 / (0.5 * hi), rel=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optimizer"] == "momentum" and cfg["command"] == "stability map"
    assert "versions" in cfg["environment"] and cfg["seed"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["stable_fraction"] < 1
    assert (out / "map.csv").read_text().startswith("curvature,lr,spectral_radius,stable")


def test_map_beta_axis(tmp_path):
    out = tmp_path / "b"
    argv = ["stability", "map", "--optimizer", "heavy_ball", "--axis", "beta"]
    assert main([*argv, "--curvature", "2", "--resolution", "8", "--out", str(out)]) == 0
    data = json.loads((out / "map.json").read_text())
    assert data["y_name"] == "beta"
    for b, beta in zip(data["boundary"], data["y_values"], strict=True):
        assert b == pytest.approx(1 + beta, rel=1e-6)  # 2 (1 + beta) / h with h = 2


def test_missing_weights_path_is_file_not_found_and_a_typo_is_unknown(capsys):
    code = _exit_code(["stability", "--optimizer", "/nope/theta.safetensors", "--curvature", "1"])
    assert code == 2 and "file not found: /nope/theta.safetensors" in capsys.readouterr().err
    code = _exit_code(["stability", "--optimizer", "strar", "--curvature", "1"])
    assert code == 2 and "unknown optimizer 'strar'" in capsys.readouterr().err


def test_meta_linear_writes_e1_outputs(tmp_path, capsys):
    out = tmp_path / "e1"
    assert main(["stability", "meta-linear", "--out", str(out), "--outer-steps", "4"]) == 0
    assert "linear" in capsys.readouterr().out
    data = json.loads((out / "e1.json").read_text())
    assert set(data) == {"linear", "nominal", "nominal_wd"}
    assert len(data["linear"]["spectral_radius"]) == 5
    assert (out / "e1.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["nominal_wd"]["final_spectral_radius"] < 1
    assert json.loads((out / "config.json").read_text())["command"] == "stability meta-linear"


def test_package_exports_are_lazy_and_resolve():
    import lopt.analysis as A

    assert A.build("sgd", 1.0, 0.5).spectral_radius() == pytest.approx(0.5)
    assert callable(A.stability_map) and callable(A.stability_report)
    from lopt.analysis.linearize import linearize

    assert callable(linearize)
    with pytest.raises(AttributeError):
        A.nope  # noqa: B018


def test_map_single_curvature_row_and_bad_range(tmp_path, capsys):
    out = tmp_path / "row"
    argv = ["stability", "map", "--optimizer", "sgd", "--curvature", "4", "--out", str(out)]
    assert main([*argv, "--resolution", "10", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["stable_fraction"] < 1
    data = json.loads((out / "map.json").read_text())
    assert data["boundary"] == [pytest.approx(0.5)]
    bad = ["stability", "map", "--optimizer", "sgd", "--curvature", "-1,2"]
    assert _exit_code([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert "--curvature" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # arguments are checked before --out is created
