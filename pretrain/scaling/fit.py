"""Mu-scaling loss prediction: fit L(N) = a·N^b + c and extrapolate with an uncertainty.

Why this form: μScaling (arXiv 2304.06875) fits exactly this saturating power
law to μP models of several widths trained with the same hyperparameters and
data; the irreducible term c keeps the extrapolation from going below the
data's entropy.  Uncertainty comes two ways: the fit's covariance (delta
method, local) and a residual bootstrap (refit on fitted + resampled
residuals; robust with few points).  N may be parameters or compute: the same
fit gives L(C).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import curve_fit


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(n, b) + c


@dataclass
class PowerLawFit:
    a: float
    b: float
    c: float
    covariance: list[list[float]]
    rms_residual: float
    scale: float  # N was divided by this before fitting (keeps a well-conditioned)

    def predict(self, n: float | np.ndarray) -> np.ndarray:
        return power_law(np.asarray(n, float) / self.scale, self.a, self.b, self.c)

    def predict_std(self, n: float) -> float:
        """Delta-method standard deviation of the prediction at ``n``."""
        x = float(n) / self.scale
        grad = np.array([x ** self.b, self.a * x ** self.b * math.log(x), 1.0])
        return float(math.sqrt(max(0.0, grad @ np.asarray(self.covariance) @ grad)))

    def as_dict(self) -> dict:
        return asdict(self)


def fit_power_law(n: np.ndarray, loss: np.ndarray, start: tuple[float, float, float] | None = None
                  ) -> PowerLawFit:
    """Least-squares fit with b < 0 and 0 <= c < min(loss) (a saturating, decreasing law).

    Several starting points are tried and the best kept, unless ``start`` (a, b, c in the
    scaled units of a previous fit) is given: the bootstrap refits from the full fit.
    """
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    if n.size < 4:
        raise ValueError(f"need at least 4 points for a 3-parameter fit, got {n.size}")
    if np.any(n <= 0):
        raise ValueError("sizes must be positive")
    scale = float(np.exp(np.mean(np.log(n))))
    x = n / scale
    if start is not None:
        starts = [(start[0], min(start[1], -1e-6), min(start[2], float(loss.min()) * (1 - 1e-9)))]
    else:
        starts = []
        for c0 in (0.0, 0.5 * loss.min(), 0.9 * loss.min()):
            for b0 in (-0.1, -0.3, -0.7):
                starts.append((max(1e-6, float(np.mean((loss - c0) / np.power(x, b0)))), b0, c0))
    best = None
    for a0, b0, c0 in starts:
        try:
            params, cov = curve_fit(power_law, x, loss, p0=(a0, b0, c0),
                                    bounds=([0.0, -5.0, 0.0], [np.inf, 0.0, float(loss.min())]),
                                    maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        rms = float(np.sqrt(np.mean((power_law(x, *params) - loss) ** 2)))
        if best is None or rms < best[2]:
            best = (params, cov, rms)
    if best is None:
        raise RuntimeError("power-law fit did not converge from any starting point")
    params, cov, rms = best
    cov = np.where(np.isfinite(cov), cov, 0.0)
    return PowerLawFit(a=float(params[0]), b=float(params[1]), c=float(params[2]),
                       covariance=cov.tolist(), rms_residual=rms, scale=scale)


def bootstrap_predictions(n: np.ndarray, loss: np.ndarray, target_n: float, samples: int = 500,
                          seed: int = 0) -> np.ndarray:
    """Predictions at ``target_n`` from refits on fitted values + resampled residuals."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    base = fit_power_law(n, loss)
    fitted = base.predict(n)
    residuals = loss - fitted
    # inflate for the 3 fitted parameters so the spread is not underestimated
    residuals = residuals * math.sqrt(len(n) / max(1, len(n) - 3))
    rng = np.random.default_rng(seed)
    predictions = []
    for _ in range(samples):
        sample = fitted + rng.choice(residuals, size=len(n), replace=True)
        try:
            refit = fit_power_law(n, sample, start=(base.a, base.b, base.c))
            predictions.append(float(refit.predict(target_n)))
        except RuntimeError:
            continue
    return np.asarray(predictions)
