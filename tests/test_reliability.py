"""Oscillation measures on synthetic curves with known answers."""

import numpy as np
import pytest

from rllib_staq import reliability


def test_flat_curve_has_no_oscillation():
    flat = np.full(12, 37.5)
    measures = reliability.curve_measures(flat)
    assert measures == {name: 0.0 for name in reliability.MEASURES}


def test_centred_late_std_uses_the_late_phase_around_its_own_mean():
    # Early phase is wild; the late half alternates 10, 14 around 12 -> std exactly 2.
    curve = np.array([0.0, 500.0, -300.0, 90.0, 10.0, 14.0, 10.0, 14.0])
    assert reliability.centred_late_std(curve) == pytest.approx(2.0)
    # A shifted late phase has the same centred std.
    assert reliability.centred_late_std(curve + 1000.0) == pytest.approx(2.0)
    # late_fraction=1 takes the whole curve.
    assert reliability.centred_late_std(curve, late_fraction=1.0) == pytest.approx(np.std(curve))
    # An odd length: ceil(0.5 * 5) = 3 last evaluations.
    np.testing.assert_array_equal(reliability.late_phase(np.arange(5.0)), [2.0, 3.0, 4.0])


def test_max_drawdown_of_a_known_curve():
    # Peaks 10 then 12; the worst fall is 12 -> 2 = 10 (not 10 -> 4 = 6).
    curve = np.array([0.0, 10.0, 4.0, 8.0, 12.0, 2.0, 11.0])
    assert reliability.max_drawdown(curve) == pytest.approx(10.0)
    assert reliability.max_drawdown(np.arange(10.0)) == 0.0  # monotone: no drawdown


def test_dispersion_across_time_is_the_iqr_of_first_differences():
    # Differences 1..9 (shuffled): linear quartiles 3 and 7 -> IQR 4.
    differences = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0])
    curve = np.concatenate([[100.0], 100.0 + np.cumsum(differences)])
    assert reliability.dispersion_across_time(curve) == pytest.approx(4.0)
    # A linear trend has constant differences: no dispersion.
    assert reliability.dispersion_across_time(3.0 * np.arange(20.0)) == 0.0


def test_short_term_risk_is_the_cvar_of_first_differences():
    # Differences -1, -2, ..., -100 (any order): the 5% quantile is -95.05 (linear), so the
    # tail is -96..-100 and its mean -98.
    differences = -np.arange(1.0, 101.0)
    np.random.default_rng(0).shuffle(differences)
    curve = np.concatenate([[0.0], np.cumsum(differences)])
    assert reliability.short_term_risk(curve) == pytest.approx(-98.0)
    # With few differences the tail is the single worst one.
    assert reliability.short_term_risk(np.array([0.0, 5.0, -20.0, -10.0])) == pytest.approx(-25.0)


def test_measures_refuse_bad_input():
    with pytest.raises(ValueError, match="at least 2 evaluations"):
        reliability.dispersion_across_time(np.array([1.0]))
    with pytest.raises(ValueError, match="alpha"):
        reliability.conditional_value_at_risk(np.arange(5.0), alpha=1.5)
    with pytest.raises(ValueError, match="late_fraction"):
        reliability.late_phase(np.arange(5.0), late_fraction=0.0)
    with pytest.raises(ValueError, match="statistic"):
        reliability.interval_over_runs({"a": np.ones(3)}, statistic="max")


def test_interval_over_runs_bootstraps_with_rliable():
    constant = reliability.interval_over_runs({"a": np.full(5, 3.0)})
    assert constant["a"] == pytest.approx((3.0, 3.0, 3.0))
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    mean, low, high = reliability.interval_over_runs({"b": values}, statistic="mean")["b"]
    assert mean == pytest.approx(3.5)
    assert 0.0 < low < 3.5 < high < 7.0
    # IQM of 0..7 (rliable trims 25% each side): mean of 2..5 = 3.5.
    iqm = reliability.interval_over_runs({"b": values})["b"]
    assert iqm[0] == pytest.approx(3.5)


def test_bootstrap_intervals_do_not_depend_on_or_change_numpy_global_state():
    """rliable 1.2.0 resamples with np.random's global generator, whatever random_state
    it is given: the CIs must still be reproducible, and the caller's state kept."""
    values = {"A": np.array([50.0, 51.0, 52.0]), "B": np.array([10.0, 30.0, 20.0, 40.0])}
    results = []
    for global_seed in (0, 1, 123):
        np.random.seed(global_seed)
        before = np.random.get_state()[1].copy()
        results.append(reliability.interval_over_runs(values, statistic="mean", reps=300))
        np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert results[0] == results[1] == results[2]
    # Each label's interval does not depend on the other labels either.
    alone = reliability.interval_over_runs({"A": values["A"]}, statistic="mean", reps=300)
    assert alone["A"] == results[0]["A"]
