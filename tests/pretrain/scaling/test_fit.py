"""The Mu-scaling fit recovers a known law and its extrapolation from noisy synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.scaling.fit import bootstrap_predictions, fit_power_law, power_law


def test_fit_recovers_known_parameters_and_extrapolates():
    a, b, c = 40.0, -0.3, 2.1
    n = np.array([2e5, 5e5, 1.2e6, 3e6, 7e6, 1.6e7])
    rng = np.random.default_rng(0)
    loss = power_law(n, a, b, c) + rng.normal(0, 0.002, size=n.size)
    fit = fit_power_law(n, loss)
    assert fit.b == pytest.approx(b, abs=0.03)
    assert fit.c == pytest.approx(c, abs=0.05)
    target = 4 * n[-1]
    truth = power_law(target, a, b, c)
    assert float(fit.predict(target)) == pytest.approx(truth, rel=0.005)
    assert 0 < fit.predict_std(target) < 0.05
    boot = bootstrap_predictions(n, loss, target, samples=100, seed=1)
    assert boot.size >= 90
    lo, hi = np.percentile(boot, [1, 99])
    assert lo - 0.01 < truth < hi + 0.01
    assert np.std(boot) < 0.05


def test_fit_respects_the_saturating_form_and_refuses_too_few_points():
    n = np.array([1e5, 1e6, 1e7, 1e8])
    loss = power_law(n, 10.0, -0.2, 1.5)
    fit = fit_power_law(n, loss)
    assert fit.b < 0 and 0 <= fit.c <= loss.min()
    assert fit.rms_residual < 1e-4
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law(n[:3], loss[:3])
