"""Oscillation and reliability measures of learning curves, with bootstrap CIs from rliable.

One curve is one run's greedy evaluation returns in the order they were taken, shape [T].

- ``centred_late_std``: the paper's view (Jobard et al., Fig. 3 left, "centred individual-run
  returns"): the late-phase returns of a run minus that run's own mean; we report their
  standard deviation. The late phase is the last ``late_fraction`` of the evaluations.
- Chan et al., "Measuring the Reliability of Reinforcement Learning Algorithms" (ICLR 2020),
  within-run measures on the detrended curve (first differences d_t = R_{t+1} - R_t):
  dispersion across time ``dispersion_across_time`` = IQR of d; short-term risk
  ``short_term_risk`` = CVaR at 5% of d (the mean of the differences at or below their 5%
  quantile: the typical size of the worst drops, negative when the curve drops); long-term
  risk ``max_drawdown`` = the largest fall from a running peak of the raw curve. Chan et al.
  compute DT in a sliding window and LRT as a CVaR of drawdowns; with the 4-20 evaluations
  per run we can afford here, we take the whole curve and the maximum.

Aggregation over runs (``interval_over_runs``) is rliable's IQM with a stratified
bootstrap 95% CI (percentile method).
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import stats

MEASURES = ("centred_late_std", "dispersion_across_time", "short_term_risk", "max_drawdown")


def late_phase(returns: np.ndarray, late_fraction: float = 0.5) -> np.ndarray:
    """The last ``ceil(late_fraction * T)`` evaluations (at least 1)."""
    if not 0 < late_fraction <= 1:
        raise ValueError(f"late_fraction must be in (0, 1], got {late_fraction}")
    returns = np.asarray(returns, dtype=float)
    count = max(1, int(np.ceil(late_fraction * len(returns))))
    return returns[-count:]


def centred_late_std(returns: np.ndarray, late_fraction: float = 0.5) -> float:
    """Std of the late-phase returns after subtracting the run's own late-phase mean."""
    late = late_phase(returns, late_fraction)
    centred = late - late.mean()
    return float(np.sqrt(np.mean(centred**2)))


def first_differences(returns: np.ndarray) -> np.ndarray:
    returns = np.asarray(returns, dtype=float)
    if len(returns) < 2:
        raise ValueError(f"a curve needs at least 2 evaluations, got {len(returns)}")
    return np.diff(returns)


def dispersion_across_time(returns: np.ndarray) -> float:
    """IQR of the first differences (linear quantiles, scipy's default)."""
    return float(stats.iqr(first_differences(returns)))


def conditional_value_at_risk(values: np.ndarray, alpha: float = 0.05) -> float:
    """Mean of the values at or below their alpha-quantile (the lower tail)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values = np.asarray(values, dtype=float)
    value_at_risk = np.quantile(values, alpha)
    return float(values[values <= value_at_risk].mean())


def short_term_risk(returns: np.ndarray, alpha: float = 0.05) -> float:
    """CVaR_alpha of the first differences (negative: the typical worst drop)."""
    return conditional_value_at_risk(first_differences(returns), alpha)


def max_drawdown(returns: np.ndarray) -> float:
    """max_t (max_{s<=t} R_s - R_t), >= 0."""
    returns = np.asarray(returns, dtype=float)
    return float(np.max(np.maximum.accumulate(returns) - returns))


def curve_measures(returns: np.ndarray, late_fraction: float = 0.5) -> dict[str, float]:
    """All four measures of one run."""
    return {
        "centred_late_std": centred_late_std(returns, late_fraction),
        "dispersion_across_time": dispersion_across_time(returns),
        "short_term_risk": short_term_risk(returns),
        "max_drawdown": max_drawdown(returns),
    }


@contextlib.contextmanager
def seeded_numpy_global_rng(seed: int):
    """NumPy's global generator seeded inside the block, the caller's state restored after.

    rliable 1.2.0's ``StratifiedBootstrap.update_indices`` draws its resamples with
    ``np.random.choice``, the global generator, not the ``random_state`` it is
    given; so its CIs changed with whatever had used the global generator before
    (the same data gave [50.0, 52.0] and [50.2, 52.0]). Every rliable bootstrap here
    runs inside this block.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def interval_over_runs(
    values_by_label: dict[str, np.ndarray], statistic: str = "iqm", reps: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Point estimate and 95% bootstrap CI over runs, per label: {label: (point, low, high)}.

    ``values_by_label[label]`` holds one value per run [runs] or per run and task
    [runs, tasks]; ``statistic`` is rliable's ``iqm`` or ``mean``.
    """
    from rliable import library as rly
    from rliable import metrics

    aggregates = {"iqm": metrics.aggregate_iqm, "mean": metrics.aggregate_mean}
    if statistic not in aggregates:
        raise ValueError(f"statistic must be one of {list(aggregates)}, got {statistic!r}")
    aggregate = aggregates[statistic]
    points, intervals = {}, {}
    for label, values in values_by_label.items():
        values = np.asarray(values, dtype=float)
        # Seeded per label, so that each CI does not depend on the other labels.
        with seeded_numpy_global_rng(seed):
            point, interval = rly.get_interval_estimates(
                {label: values[:, None] if values.ndim == 1 else values},
                lambda x: np.array([aggregate(x)]),
                reps=reps,
                random_state=np.random.RandomState(seed),
            )
        points[label], intervals[label] = point[label], interval[label]
    return {
        label: (
            float(points[label][0]),
            float(intervals[label][0, 0]),
            float(intervals[label][1, 0]),
        )
        for label in points
    }
