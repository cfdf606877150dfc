"""The constants of the statistics kit and the sizing of its chi-square test.

`required_samples` and `detectable_tv` (re-exported by `agnostic_sampling.stats`, whose module
docstring states the sizing rule) and the levels every assertion defaults to.
"""

from __future__ import annotations

import functools
import math

__all__ = ["DEFAULT_ALPHA", "DEFAULT_POWER", "DEFAULT_TV", "MAX_ASSERTIONS", "MIN_EXPECTED",
           "MISSING_EXPECTED", "SEED_OFFSET_ENV", "SUITE_ALPHA", "check_level", "detectable_tv",
           "required_samples"]

SUITE_ALPHA = 1e-3
"""False-alarm budget of a whole test suite: the chance that any correct sampler fails."""
MAX_ASSERTIONS = 1000
"""The number of assertions the budget is split over (Bonferroni)."""
DEFAULT_ALPHA = SUITE_ALPHA / MAX_ASSERTIONS
"""Per-assertion level: a suite of up to 1000 assertions stays within `SUITE_ALPHA`."""
DEFAULT_POWER = 0.99
DEFAULT_TV = 0.02
"""The total-variation distance that `assert_samples_match` must detect by default."""
MIN_EXPECTED = 50
"""Smallest expected count of a cell. The textbook 5 is anti-conservative at small alpha."""
MISSING_EXPECTED = 64
"""A token expected this often that never appears fails outright (chance under H0 ~ e^-64)."""
SEED_OFFSET_ENV = "AGNOSTIC_SAMPLING_SEED_OFFSET"
"""Environment variable added to every `agnostic_sampling.testing.seed_for` seed (calibration runs)."""



@functools.lru_cache(maxsize=1024)
def _noncentrality(dof: int, alpha: float, power: float) -> float:
    """The noncentrality at which a level-``alpha`` chi-square test on ``dof`` has ``power``."""
    from scipy import optimize
    from scipy import stats as st

    critical = st.chi2.isf(alpha, dof)

    def shortfall(lam: float) -> float:
        return float(st.ncx2.sf(critical, dof, lam)) - power

    upper = 1.0
    while shortfall(upper) < 0:
        upper *= 2
    return float(optimize.brentq(shortfall, 0.0, upper, xtol=1e-10, rtol=1e-12))


def check_level(alpha: float, power: float) -> None:
    """Refuse a level outside (0, 1) or a power outside (alpha, 1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power}")


def required_samples(tv: float, *, power: float = DEFAULT_POWER, alpha: float = DEFAULT_ALPHA,
                     cells: int = 20) -> int:
    """The sample count at which a chi-square test on ``cells`` cells detects a deviation ``tv``.

    Worst case over the direction of the deviation: ``n = lam(cells - 1, alpha, power) /
    (4 tv^2)``, where ``lam`` is the noncentrality at which the noncentral chi-square reaches
    ``power`` beyond the level-``alpha`` critical value (see the module docstring). Any
    deviation of total-variation distance ``tv`` between the cell distributions is detected
    with probability at least ``power``; a deviation inside one cell is not seen at all.

    Args:
        tv: total-variation distance to detect, in ``(0, 1]``.
        power: probability of detecting it.
        alpha: level of the test (its false-alarm probability).
        cells: number of cells of the test (``dof = cells - 1``), at least 2.

    Returns:
        The smallest sample count (rounded up).

    Example:
        >>> from agnostic_sampling.stats import required_samples
        >>> required_samples(0.01, power=0.99, alpha=1e-6, cells=20)
        214252
    """
    if not 0 < tv <= 1:
        raise ValueError(f"tv must be in (0, 1], got {tv}")
    if cells < 2:
        raise ValueError(f"cells must be at least 2, got {cells}")
    check_level(alpha, power)
    return math.ceil(_noncentrality(int(cells) - 1, float(alpha), float(power)) / (4 * tv * tv))


def detectable_tv(n: int, *, power: float = DEFAULT_POWER, alpha: float = DEFAULT_ALPHA,
                  cells: int = 20) -> float:
    """The total-variation distance that ``n`` draws detect with ``power``.

    The inverse of `required_samples`.

    With ``cells == 1`` (a one-token support) every deviation puts mass outside the support,
    and one draw there fails the test: the answer is ``1 - (1 - power) ** (1 / n)``.

    Args:
        n: number of draws.
        power: probability of detecting the deviation.
        alpha: level of the test.
        cells: number of cells of the test.

    Returns:
        The distance, at most 1.

    Example:
        >>> from agnostic_sampling.stats import detectable_tv
        >>> round(detectable_tv(214252, power=0.99, alpha=1e-6, cells=20), 4)
        0.01
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    check_level(alpha, power)
    if cells < 2:
        return float(-math.expm1(math.log1p(-power) / n))
    return min(1.0, math.sqrt(_noncentrality(int(cells) - 1, float(alpha), float(power)) / (4 * n)))
