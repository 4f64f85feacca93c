"""Speedup, tuning and summary metrics on synthetic curves with answers worked out by hand."""

import math

import numpy as np
import pytest

from lopt.evaluate import metrics as m


def test_smoothed_is_a_trailing_mean():
    x = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    # by hand, window 2: [4], [4,2], [2,6], [6,0], [0,8]
    np.testing.assert_allclose(m.smoothed(x, 2), [4.0, 3.0, 4.0, 3.0, 4.0])
    np.testing.assert_allclose(m.smoothed(x, 1), x)
    np.testing.assert_allclose(m.smoothed(x, 10), np.cumsum(x) / np.arange(1, 6))


def test_window_is_five_percent():
    assert m.window(1000) == 50 and m.window(10) == 1 and m.window(1) == 1


def test_speedup_of_a_curve_against_itself_is_one():
    curve = 1.0 / (1.0 + np.arange(200))
    s = m.speedup(curve, np.concatenate([curve, curve[-1] * np.ones(600)]), cap=4)
    assert s.value == pytest.approx(1.0) and not s.censored and not s.diverged


def test_speedup_known_ratio():
    """Optimizer: losses 1 - k/100 for k < 100 (window 5). Target = mean(losses[95:100]) =
    1 - 97/100 = 0.03. Baseline: 1 - k/201, smoothed at t = 1 - (t - 3)/201 <= 0.03 first at
    t - 3 >= 194.97, i.e. t = 198: speedup 1.98 (no tie, so no float rounding question)."""
    t = np.arange(400, dtype=float)
    opt = np.clip(1.0 - t[:100] / 100.0, 0.0, None)
    base = np.clip(1.0 - t / 201.0, 0.0, None)
    s = m.speedup(opt, base, cap=4)
    assert s.target == pytest.approx(0.03)
    assert s.baseline_steps == 198 and s.value == pytest.approx(1.98) and not s.censored


def test_speedup_capped_when_baseline_never_reaches():
    opt = np.linspace(1.0, 0.1, 100)
    base = np.linspace(1.0, 0.5, 400)  # plateaus above the target
    s = m.speedup(opt, base, cap=4)
    assert s.censored and s.value == 4.0 and s.baseline_steps is None
    assert s.label() == ">= 4.00"


def test_speedup_only_looks_at_cap_times_steps():
    opt = np.linspace(1.0, 0.1, 100)
    base = np.concatenate([np.linspace(1.0, 0.5, 300), np.zeros(300)])  # reaches at ~301
    assert m.speedup(opt, base, cap=3).censored
    s = m.speedup(opt, base, cap=6)
    assert not s.censored and 3.0 < s.value < 3.1


def test_slower_optimizer_has_speedup_below_one():
    t = np.arange(400, dtype=float)
    opt = 1.0 - 0.5 * t[:100] / 100.0  # reaches ~0.5 at step 100
    base = np.clip(1.0 - t / 100.0, 0.0, None)  # reaches 0.5 at ~step 50
    s = m.speedup(opt, base, cap=4)
    assert 0.45 < s.value < 0.6


@pytest.mark.parametrize(
    "curve",
    [
        np.r_[np.linspace(1, 0.5, 50), np.nan, np.linspace(0.5, 0.1, 49)],
        np.r_[np.linspace(1, 0.5, 50), np.inf, np.linspace(0.5, 0.1, 49)],
        np.linspace(1.0, 3.0, 100),  # ends above the initial loss
    ],
)
def test_divergent_runs_are_flagged_not_averaged(curve):
    s = m.speedup(curve, np.linspace(1.0, 0.0, 400), cap=4)
    assert s.diverged and s.value is None and s.label() == "diverged"
    good = m.speedup(np.linspace(1.0, 0.5, 100), np.linspace(1.0, 0.0, 400), cap=4)
    summary = m.summarize([s, good, good])
    assert summary["diverged"] == 1 and summary["tasks"] == 3
    assert summary["median"] == pytest.approx(good.value)


def test_tune_picks_the_lowest_final_smoothed_loss_and_flags_the_edge():
    steps = 100
    t = np.arange(4 * steps, dtype=float)
    grid = [
        1.0 - 0.2 * t / 400,  # too small a step
        np.exp(-t / 30.0),  # best at step 100
        np.exp(-t / 60.0),
        np.r_[np.exp(-t[:20] / 10.0), np.full(380, np.nan)],  # diverges
    ]
    index, values = m.tune(grid, steps)
    assert index == 1 and values[3] is None
    assert not m.on_edge(index, len(grid))
    index, _ = m.tune(grid[1:], steps)
    assert index == 0 and m.on_edge(index, 3)
    assert m.tune([grid[3]], steps) == (None, [None])


def test_best_speedup_takes_the_grid_point_that_reaches_first():
    t = np.arange(400, dtype=float)
    opt = np.clip(1.0 - t[:100] / 100.0, 0.0, None)
    slow = np.clip(1.0 - t / 301.0, 0.0, None)  # t - 3 >= 0.97 * 301 = 291.97: t = 295
    fast = np.clip(1.0 - t / 201.0, 0.0, None)  # t = 198 (see test_speedup_known_ratio)
    s, index = m.best_speedup(opt, [slow, fast], cap=4)
    assert index == 1 and s.value == pytest.approx(1.98)
    assert m.speedup(opt, slow, cap=4).baseline_steps == 295
    s, index = m.best_speedup(opt, [np.ones(400)], cap=4)
    assert index is None and s.censored


def test_iqm_and_bootstrap():
    assert m.iqm([1, 2, 3, 4]) == pytest.approx(2.5)
    assert m.iqm([1, 2, 3, 4, 100, -100, 2.5, 2.6]) == pytest.approx(np.mean([2, 2.5, 2.6, 3]))
    lo, hi = m.bootstrap_ci([1.0, 1.0, 1.0])
    assert lo == hi == 1.0
    lo, hi = m.bootstrap_ci(np.linspace(0, 10, 51))
    assert lo < 5.0 < hi and hi - lo < 5
    assert m.bootstrap_ci([1, 5, 9], seed=3) == m.bootstrap_ci([1, 5, 9], seed=3)


def test_summary_counts_censored_values_at_the_cap():
    ss = [m.Speedup(4.0, True, False, 0.1, None), m.Speedup(2.0, False, False, 0.1, 200),
          m.Speedup(1.0, False, False, 0.1, 100)]
    out = m.summarize(ss)
    assert out["censored"] == 1 and out["median"] == 2.0
    assert out["geomean"] == pytest.approx(math.exp(np.mean(np.log([4.0, 2.0, 1.0]))))
