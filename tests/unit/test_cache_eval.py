"""Cache evaluation helpers: the static curve interpolation, the binomial interval, the report tables."""

from __future__ import annotations

import pytest

from gateway.cache.evaluate import StreamResult, interpolate_static, wilson
from gateway.cache.report import markdown


def _static(param: float, hit: float, err: float) -> StreamResult:
    return StreamResult("w", "static", param, 1000, 0, 0, 0, 0, 0, hit, err, (0.0, 1.0), 0)


def test_static_curve_interpolates_on_its_upper_envelope_and_clamps() -> None:
    curve = [_static(0.9, 0.10, 0.01), _static(0.8, 0.30, 0.03), _static(0.7, 0.25, 0.05)]
    assert interpolate_static(curve, 0.02) == pytest.approx(0.20)  # halfway between (0.01, .1) and (.03, .3)
    # a looser threshold that hits less (0.25 at 5 %) does not pull the curve down: envelope 0.30
    assert interpolate_static(curve, 0.04) == pytest.approx(0.30)
    assert interpolate_static(curve, 0.0) == pytest.approx(0.10)  # below the sweep: its first point
    assert interpolate_static(curve, 0.5) == pytest.approx(0.30)


def test_wilson_interval_by_hand() -> None:
    lo, hi = wilson(10, 100)
    # Wilson 95 % for 10/100: centre (0.1 + 1.96^2/200) / (1 + 1.96^2/100), half-width from the formula
    assert lo == pytest.approx(0.0552, abs=5e-4) and hi == pytest.approx(0.1744, abs=5e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12)


def test_report_names_each_rule_and_the_verdict() -> None:
    row = {
        **_static(0.02, 0.25, 0.012).row(),
        "policy": "adaptive",
        "rule": "budget-plain",
        "bound_holds": True,
        "static_hit_at_same_error": 0.2,
        "on_or_above_static": True,
        "llm_calls_saved": 250,
    }
    out = {
        "model": "minilm",
        "seed": 0,
        "policy_config": {"adaptive_rule": "budget", "contrast_weight": 0.75, "min_obs": 10},
        "banking77": {"static": [_static(0.9, 0.1, 0.01).row()], "adaptive": [row], "stream_length": 1000},
    }
    md = markdown(out)
    assert "contrast weight 0.75" in md
    assert "| adaptive (budget-plain) | 0.02 | 25.00% | 1.20% [0.00%, 100.00%] | 250 |" in md
    assert "| budget-plain | 0.02 | yes | 25.00% | 1.20% | 20.00% | yes |" in md
