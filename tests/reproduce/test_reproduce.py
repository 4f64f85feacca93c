"""``lopt reproduce`` end to end on a tiny budget (quadratic tasks), and its CLI errors."""

import dataclasses
import json

import pytest

from lopt.cli.main import main
from lopt.reproduce import QUICK, reproduce
from lopt.reproduce.runner import EXPERIMENTS, parse_only

TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    family="quadratic_family",
    seeds=(0, 1),
    outer_steps=6,
    num_slots=2,
    truncation=5,
    horizon_min=10,
    horizon_max=20,
    eval_every=3,
    eval_tasks=2,
    eval_horizon=10,
    eval_seeds=1,
    in_distribution_tasks=("quadratic_family@1",),
    ood_tasks=("quadratic",),
    long_horizon_factor=2,
    e1_outer_steps=5,
    e1_resolution=6,
)


@pytest.mark.slow
def test_tiny_reproduction_writes_every_file_and_resumes(tmp_path):
    results = reproduce(tmp_path, TINY, progress=False, announce=lambda m: None)
    assert set(results["experiments"]) == set(EXPERIMENTS)
    assert isinstance(results["meta_training_speedup"], float)
    for exp, outcome in results["experiments"].items():
        assert outcome["claim"] and outcome["setup"] and outcome["table"].startswith("|")
        assert (tmp_path / exp.lower() / "result.json").exists()
        for fig in outcome["figures"]:
            assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG", fig
    report = (tmp_path / "report.md").read_text()
    for exp in EXPERIMENTS:
        assert f"## {exp}:" in report
    assert json.loads((tmp_path / "results.json").read_text())["budget"]["name"] == "tiny"
    # a second call finds every experiment finished and runs nothing
    (tmp_path / "e2" / "result.json").write_text(
        (tmp_path / "e2" / "result.json").read_text().replace('"claim": "', '"claim": "KEPT ')
    )
    again = reproduce(tmp_path, TINY, progress=False, announce=lambda m: None)
    assert again["experiments"]["E2"]["claim"].startswith("KEPT ")


def test_parse_only():
    assert parse_only("e2, E5") == ["E2", "E5"]
    assert parse_only(None) == list(EXPERIMENTS)
    with pytest.raises(ValueError, match="E1, E2, E3, E4, E5"):
        parse_only("E9")


@pytest.mark.parametrize(
    "argv, expected",
    [(["--only", "E7"], "E1, E2, E3, E4, E5")],
)
def test_cli_bad_input(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--quick", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_file_and_a_foreign_folder(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--quick", "--out", str(f)])
    assert exc.value.code == 2 and "is a file" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--quick", "--out", str(tmp_path / "d")])
    assert exc.value.code == 2 and "not empty" in capsys.readouterr().err
