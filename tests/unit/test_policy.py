"""The threshold math of the semantic cache, on hand-built and simulated observations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.cache.policy import ThresholdFit, VerifiedPolicy, fit_threshold, is_separated, static_decision


def _simulate(rng: np.random.Generator, n: int, gamma: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    s = rng.uniform(0.3, 1.0, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-gamma * (s - t)))).astype(float)
    return s, y


def test_mle_recovers_known_parameters() -> None:
    s, y = _simulate(np.random.default_rng(1), 4000, gamma=20.0, t=0.7)
    fit = fit_threshold(s, y, pseudo=False)
    assert fit is not None and not fit.separated
    sd = math.sqrt(fit.var_t)
    # 4000 draws: the MLE lies within ~3 standard errors of the truth (sd(t) ~ 0.003 here)
    assert abs(fit.t - 0.7) < 3 * sd + 1e-3
    assert 15.0 < fit.gamma < 26.0  # slope SE ~ 1.2 at this n
    assert sd < 0.01


def test_hand_built_overlapping_observations() -> None:
    s = [0.50, 0.60, 0.70, 0.75, 0.80, 0.90, 0.95]
    y = [0, 0, 1, 0, 1, 1, 1]
    assert not is_separated(np.array(s), np.array(y, dtype=float))
    fit = fit_threshold(s, y)
    assert fit is not None and fit.usable and not fit.separated
    assert 0.6 < fit.t < 0.8  # the labels switch between 0.6 and 0.8
    assert fit.n == 7


def test_separated_labels_use_the_finite_fallback() -> None:
    fit = fit_threshold([0.5, 0.6, 0.8, 0.85, 0.9], [0, 0, 1, 1, 1])
    assert fit is not None and fit.separated and fit.usable
    assert math.isfinite(fit.gamma) and math.isfinite(fit.var_t)
    assert 0.55 < fit.t < 0.85  # Firth's estimate sits in (or near) the gap between the classes
    # the same pattern observed ten times is more certain
    more = fit_threshold([0.5, 0.6, 0.8, 0.85, 0.9] * 10, [0, 0, 1, 1, 1] * 10)
    assert more is not None and more.var_t < fit.var_t


def test_all_correct_observations_are_separated_by_the_pseudo_points() -> None:
    fit = fit_threshold([0.8, 0.9, 0.85], [1, 1, 1])
    assert fit is not None and fit.separated
    # three agreeing points leave the threshold very uncertain
    assert math.sqrt(fit.var_t) > 0.1


def test_fit_needs_spread() -> None:
    assert fit_threshold([], [], pseudo=False) is None
    assert fit_threshold([0.7, 0.7], [0, 1], pseudo=False) is None
    with pytest.raises(ValueError):
        fit_threshold([0.1, 0.2], [1])


def test_roundtrip_of_stored_fit() -> None:
    fit = ThresholdFit(12.5, 0.71, 0.0004, 9, True)
    assert ThresholdFit.from_list(fit.to_list()) == fit


def test_exploit_probability_properties() -> None:
    pol = VerifiedPolicy()
    s, y = _simulate(np.random.default_rng(2), 2000, gamma=20.0, t=0.7)
    fit = fit_threshold(s, y)
    assert fit is not None
    probs = [pol.exploit_probability(x, fit, 0.02) for x in np.linspace(0.3, 1.0, 30)]
    assert all(b >= a - 1e-12 for a, b in zip(probs, probs[1:], strict=False))  # monotone in s
    assert all(0.02 - 1e-12 <= p <= 1.0 for p in probs)  # alpha >= 0 gives at least delta
    # far above the threshold with a tight fit: always exploit
    assert pol.exploit_probability(1.0, fit, 0.05) == 1.0
    # without a usable fit the lower bound is 0 and the rule exploits with probability delta
    assert pol.exploit_probability(0.9, None, 0.05) == pytest.approx(0.05)
    assert pol.exploit_probability(0.9, ThresholdFit(-3.0, 0.5, 0.01, 10), 0.05) == pytest.approx(0.05)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            pol.exploit_probability(0.9, fit, bad)


def test_lower_bound_is_below_the_truth_on_average() -> None:
    """alpha = max_eps (1-eps) sigmoid(gamma (s - t'_eps)) under-estimates P(correct|s) in expectation over
    data sets (it is not a per-data-set bound: the max over eps and the estimated slope see to that)."""
    pol = VerifiedPolicy()
    rng = np.random.default_rng(3)
    gamma, t = 25.0, 0.75
    alphas: dict[float, list[float]] = {x: [] for x in (0.8, 0.85, 0.9, 0.95)}
    for _ in range(200):
        s, y = _simulate(rng, 40, gamma, t)
        fit = fit_threshold(s, y)
        for x in alphas:
            alphas[x].append(pol.correct_lower_bound(x, fit))
    for x, vals in alphas.items():
        truth = 1 / (1 + math.exp(-gamma * (x - t)))
        assert float(np.mean(vals)) < truth


def test_probability_of_serving_a_wrong_response_stays_below_delta() -> None:
    """Average over simulated entries of P(exploit) * P(wrong | s) <= delta, at every similarity."""
    pol = VerifiedPolicy()
    rng = np.random.default_rng(4)
    gamma, t = 20.0, 0.7
    for delta in (0.01, 0.05):
        for x in (0.6, 0.7, 0.8, 0.9):
            wrong = 1 - 1 / (1 + math.exp(-gamma * (x - t)))
            risks = []
            for _ in range(100):
                s, y = _simulate(rng, 30, gamma, t)
                risks.append(pol.exploit_probability(x, fit_threshold(s, y), delta) * wrong)
            assert float(np.mean(risks)) <= delta


def test_static_rule() -> None:
    assert static_decision(0.9, 0.9) and not static_decision(0.89, 0.9)


def test_eps_grid_validation() -> None:
    with pytest.raises(ValueError):
        VerifiedPolicy(eps_grid=(0.0, 0.1))
