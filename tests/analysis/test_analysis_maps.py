"""Stability maps reproduce the closed-form edges and write their figure and data."""

import json

import numpy as np
import pytest

from lopt.analysis import linear as L
from lopt.analysis import maps


def test_gd_map_boundary_is_two_over_h():
    hs = np.logspace(-2, 2, 9)
    m = maps.stability_map("sgd", np.logspace(-3, 3, 40), hs)
    assert m.spectral_radius.shape == (9, 40)
    np.testing.assert_allclose(m.boundary, 2.0 / hs, rtol=1e-9)
    # grid values are the closed form |1 - alpha h|
    np.testing.assert_allclose(
        m.spectral_radius, np.abs(1 - hs[:, None] * m.x_values[None, :]), rtol=1e-12
    )


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_momentum_map_boundary_matches_closed_form(beta):
    hs = np.logspace(-1, 1, 5)
    m = maps.stability_map("momentum", np.logspace(-2, 4, 50), hs, beta=beta)
    np.testing.assert_allclose(m.boundary, 2 * (1 + beta) / ((1 - beta) * hs), rtol=1e-9)


def test_beta_axis_map_for_heavy_ball():
    betas = np.linspace(0.0, 0.95, 7)
    m = maps.stability_map("heavy_ball", np.logspace(-2, 2, 30), 2.0, betas_axis=betas)
    assert m.y_name == "beta"
    np.testing.assert_allclose(m.boundary, (1 + betas), rtol=1e-9)


def test_weight_decay_moves_the_gd_edge():
    m = maps.stability_map("sgd", np.logspace(-2, 2, 30), [1.0], weight_decay=0.2)
    assert m.boundary[0] == pytest.approx(1.8, rel=1e-9)


def test_per_direction_radius_agrees_with_full_matrix():
    hs = np.array([0.0, 0.1, 1.0, 30.0])
    for name in L.OPTIMIZERS:
        dyn = L.build(name, hs, 0.2, beta=0.7, weight_decay=0.01)
        per = maps.per_direction_radius(dyn)
        assert per.max() == pytest.approx(dyn.spectral_radius(), rel=1e-10)
        for i, h in enumerate(hs):
            assert per[i] == pytest.approx(
                L.build(name, [h], 0.2, beta=0.7, weight_decay=0.01).spectral_radius(), rel=1e-10
            )


def test_save_map_writes_png_json_csv(tmp_path):
    m = maps.stability_map("nesterov", np.logspace(-2, 1, 8), np.logspace(-1, 1, 6), beta=0.5)
    paths = maps.save_map(m, tmp_path)
    png = (tmp_path / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    data = json.loads((tmp_path / "map.json").read_text())
    assert data["x_name"] == "lr" and len(data["spectral_radius"]) == 6
    rows = (tmp_path / "map.csv").read_text().strip().splitlines()
    assert rows[0] == "curvature,lr,spectral_radius,stable" and len(rows) == 1 + 6 * 8
    assert set(paths) == {"png", "json", "csv"}


def test_invalid_map_inputs():
    with pytest.raises(ValueError):
        maps.stability_map("sgd", [0.1], [1.0])
    with pytest.raises(ValueError):
        maps.stability_map("sgd", [0.1, 1.0], [-1.0])
    with pytest.raises(ValueError):
        maps.stability_map("nope", [0.1, 1.0], [1.0])
