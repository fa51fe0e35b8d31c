"""The depth-width law of the paper: L(D, W, N) = L0 + a D^-alpha + b W^-beta + c N^-gamma.

D is depth (blocks), W width (d_model), N non-embedding parameters. The fit minimises squared relative error
with scipy's least_squares from a grid of starting exponents (the loss surface has several basins; one start
often lands in a poor one). L0 is bounded to [0, min observed loss] (an irreducible loss), exponents to
[0.05, 3]. Amplitudes are fitted as logs so they stay positive, and D, W, N are divided by
their geometric means inside the fit so the three terms start on the same scale.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

EXPONENT_STARTS = (0.2, 0.6, 1.5)
MIN_EXPONENT = 0.05  # below this a power term is a second constant and trades off freely against L0


@dataclass(frozen=True)
class DepthWidthLaw:
    L0: float
    a: float
    alpha: float
    b: float
    beta: float
    c: float
    gamma: float

    def predict(self, D, W, N) -> np.ndarray:
        D, W, N = (np.asarray(x, dtype=float) for x in (D, W, N))
        return self.L0 + self.a * D ** -self.alpha + self.b * W ** -self.beta + self.c * N ** -self.gamma

    def formula(self) -> str:
        return (f"L = {self.L0:.3f} + {self.a:.3g}*D^-{self.alpha:.3f} + {self.b:.3g}*W^-{self.beta:.3f} "
                f"+ {self.c:.3g}*N^-{self.gamma:.3f}")


def _check(D, W, N, L) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(x, dtype=float) for x in (D, W, N, L))
    n = len(arrays[0])
    if any(a.ndim != 1 or len(a) != n for a in arrays):
        raise ValueError("D, W, N and L must be 1-D and of equal length")
    if n < 8:
        raise ValueError(f"the law has 7 coefficients; fit it on at least 8 points, got {n}")
    if not all(np.isfinite(a).all() for a in arrays) or (arrays[0] <= 0).any() or (arrays[1] <= 0).any() \
            or (arrays[2] <= 0).any():
        raise ValueError("D, W, N must be positive and all values finite")
    return arrays


def fit_depth_width_law(D, W, N, L, max_exponent: float = 3.0) -> DepthWidthLaw:
    """Least-squares fit (relative residuals) of the law to observed losses; returns the best of many starts."""
    from scipy.optimize import least_squares

    D, W, N, L = _check(D, W, N, L)
    scale = [float(np.exp(np.log(x).mean())) for x in (D, W, N)]
    d, w, n = D / scale[0], W / scale[1], N / scale[2]
    spread = float(L.max() - L.min()) or float(abs(L.mean())) or 1.0

    logs = (np.log(d), np.log(w), np.log(n))

    def terms(theta: np.ndarray) -> list[np.ndarray]:
        _, la, al, lb, be, lc, ga = theta
        return [np.exp(la) * d ** -al, np.exp(lb) * w ** -be, np.exp(lc) * n ** -ga]

    def residuals(theta: np.ndarray) -> np.ndarray:
        return (theta[0] + sum(terms(theta)) - L) / L

    def jacobian(theta: np.ndarray) -> np.ndarray:
        cols = [np.ones_like(L)]
        for t, lg in zip(terms(theta), logs):  # d/d(log amp) = term, d/d(exponent) = -term * log(x)
            cols += [t, -t * lg]
        return np.stack(cols, axis=1) / L[:, None]

    lower = [0.0, -30, MIN_EXPONENT, -30, MIN_EXPONENT, -30, MIN_EXPONENT]
    upper = [float(L.min()), 30, max_exponent, 30, max_exponent, 30, max_exponent]
    best = None
    for al, be, ga in itertools.product(EXPONENT_STARTS, repeat=3):
        amp = np.log(spread / 3)
        x0 = np.array([max(0.0, float(L.min()) - spread), amp, al, amp, be, amp, ga])
        x0[0] = min(x0[0], upper[0] * (1 - 1e-6))
        sol = least_squares(residuals, x0, jac=jacobian, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
        if best is None or sol.cost < best.cost:
            best = sol
    L0, la, al, lb, be, lc, ga = best.x
    # undo the input scaling: a (D/s)^-alpha = a s^alpha D^-alpha
    return DepthWidthLaw(L0=float(L0), a=float(np.exp(la) * scale[0] ** al), alpha=float(al),
                         b=float(np.exp(lb) * scale[1] ** be), beta=float(be),
                         c=float(np.exp(lc) * scale[2] ** ga), gamma=float(ga))


def relative_errors(law: DepthWidthLaw, D, W, N, L) -> np.ndarray:
    """|predicted - observed| / observed per point."""
    L = np.asarray(L, dtype=float)
    return np.abs(law.predict(D, W, N) - L) / L
