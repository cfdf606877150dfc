"""Statistical verification of samplers.

`reference_probs` is the oracle: the pipeline of the README's "Semantics" section in float64,
one row at a time, sort-based and written for clarity. It shares no code with the fast backends.
`reference_logprobs` is its counterpart for `agnostic_sampling.logprobs`, `reference_mirostat` for
`agnostic_sampling.mirostat` (one step: the distribution and the next state).

The rest checks that draws come from a distribution. `chisquare_gof` is Pearson's test on cells
pooled from the expected probabilities and the sample count only (pooling on the observed counts
would bias it); `required_samples` and `detectable_tv` size it; `assert_samples_match` wraps it
for tests with a suite-wide false-alarm budget. Everything that needs SciPy imports it inside
the function, so importing this module (and the package) never imports SciPy.

Sizing in one line: with ``k`` cells the test detects, with probability ``power`` at level
``alpha``, every deviation whose total-variation distance (between the cell distributions) is at
least ``sqrt(lam / (4 n))``, where ``lam`` is the noncentrality at which the noncentral
chi-square with ``k - 1`` degrees of freedom exceeds the level-``alpha`` critical value with
probability ``power``. The ``4`` is the worst case: by Cauchy-Schwarz, Pearson's divergence
``sum (p'_c - p_c)^2 / p_c`` is at least ``(2 tv)^2``, with equality when the deviation is
proportional to ``p`` on two halves of equal mass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import numpy as np

from agnostic_sampling._params import SamplingParams
from agnostic_sampling._reference import reference_logprobs
from agnostic_sampling._reference import reference_mirostat
from agnostic_sampling._reference import reference_probs

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_POWER",
    "DEFAULT_TV",
    "MIN_EXPECTED",
    "SEED_OFFSET_ENV",
    "SUITE_ALPHA",
    "ChiSquareResult",
    "SpeculativeResult",
    "assert_samples_match",
    "assert_speculative_matches",
    "chisquare_gof",
    "detectable_tv",
    "reference_logprobs",
    "reference_mirostat",
    "reference_probs",
    "required_samples",
]

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


# --------------------------------------------------------------------------------------------
# Sizing


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


def _check_level(alpha: float, power: float) -> None:
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
    _check_level(alpha, power)
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
    _check_level(alpha, power)
    if cells < 2:
        return float(-math.expm1(math.log1p(-power) / n))
    return min(1.0, math.sqrt(_noncentrality(int(cells) - 1, float(alpha), float(power)) / (4 * n)))


# --------------------------------------------------------------------------------------------
# The chi-square goodness-of-fit test


def _as_probabilities(expected: Any) -> np.ndarray:
    p = np.asarray(expected)
    if p.dtype.name == "bfloat16":
        p = p.astype(np.float32)
    p = p.astype(np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"expected must be a non-empty 1-D probability vector, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("expected must hold finite, non-negative probabilities")
    total = p.sum()
    if not abs(total - 1) <= 1e-4:
        raise ValueError(f"expected must sum to 1 (within 1e-4), got {total!r}")
    return p / total


def _pool_cells(p: np.ndarray, n: int, min_expected: float) -> list[np.ndarray]:
    """Token ids of each cell, decided from the probabilities and ``n`` only.

    Tokens whose expected count reaches ``min_expected`` are cells of their own (most probable
    first); the rest of the support, in decreasing probability, is cut into consecutive bins of
    (nearly) equal mass ``target >= min_expected / n``: a bin closes as soon as its mass reaches
    ``target``. What is left at the end is a bin of its own when it still holds
    ``min_expected / n``, and otherwise joins the bin (or top cell) before it.
    """
    support = np.flatnonzero(p > 0)
    order = support[np.argsort(-p[support], kind="stable")]
    q = p[order]
    n_top = int(np.count_nonzero(n * q >= min_expected))
    cells = [order[i : i + 1] for i in range(n_top)]

    rest, rest_q = order[n_top:], q[n_top:]
    if rest.size == 0:
        return cells
    rest_mass = float(rest_q.sum())
    n_bins = int(n * rest_mass // min_expected)
    if n_bins == 0:
        if cells:
            cells[-1] = np.concatenate([cells[-1], rest])
        else:
            cells.append(rest)
        return cells

    target = rest_mass / n_bins
    cumulative = np.cumsum(rest_q)
    start, start_mass = 0, 0.0
    while start < rest.size:
        if n * (rest_mass - start_mass) < min_expected and len(cells) > n_top:
            cells[-1] = np.concatenate([cells[-1], rest[start:]])
            break
        stop = int(np.searchsorted(cumulative, start_mass + target, side="left")) + 1
        stop = min(max(stop, start + 1), rest.size)
        cells.append(rest[start:stop])
        start, start_mass = stop, float(cumulative[stop - 1])
    return cells


def _two_cell_minimum(p: np.ndarray, min_expected: float) -> int:
    """The smallest sample count for which `_pool_cells` forms two cells (by bisection)."""
    low, high = 1, 2
    while len(_pool_cells(p, high, min_expected)) < 2:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if len(_pool_cells(p, middle, min_expected)) >= 2:
            high = middle
        else:
            low = middle
    return high


@dataclasses.dataclass(frozen=True)
class ChiSquareResult:
    """The result of `chisquare_gof`, in the style of ``scipy.stats`` results.

    Attributes:
        statistic: Pearson's chi-square over the cells (``inf`` with out-of-support draws).
        pvalue: upper tail probability of ``statistic`` (``0.0`` with out-of-support draws).
        dof: degrees of freedom, ``len(cells) - 1``.
        n: number of draws, out-of-support ones included.
        cells: the token ids of each cell, most probable cell first.
        observed: draws per cell.
        expected: expected draws per cell, ``n`` times the cell's probability.
        counts: draws per token (length ``V``; ids outside ``[0, V)`` are not counted here).
        probabilities: the expected distribution per token (length ``V``, normalised).
        out_of_support: draws on zero-probability tokens or outside ``[0, V)``.
        detectable_tv: the total-variation distance between cell distributions that this test
            detects with probability ``power`` at level ``alpha``.
        alpha: the level of the test: ``detectable_tv`` and ``problems`` refer to it.
        power: the power ``detectable_tv`` refers to.
    """

    statistic: float
    pvalue: float
    dof: int
    n: int
    cells: tuple[np.ndarray, ...]
    observed: np.ndarray
    expected: np.ndarray
    counts: np.ndarray
    probabilities: np.ndarray
    out_of_support: int
    detectable_tv: float
    alpha: float
    power: float
    @property
    def problems(self) -> tuple[str, ...]:
        """Why the draws fail at level ``alpha``, one line per reason (empty when they pass).

        The reasons: draws outside the support, tokens expected at least 64 times that never
        appear, a p-value below ``alpha`` (a NaN p-value fails too).
        """
        problems = []
        counts, p = self.counts, self.probabilities
        if self.out_of_support:
            outside = np.flatnonzero((p == 0) & (counts > 0))
            listed = ", ".join(f"{int(t)} x{int(counts[t])}" for t in outside[:8]) or "ids out of range"
            problems.append(f"{self.out_of_support} draws outside the support (tokens: {listed})")
        expected_counts = self.n * p
        missing = np.flatnonzero((expected_counts >= MISSING_EXPECTED) & (counts == 0))
        if missing.size:
            listed = ", ".join(f"{int(t)} (expected {expected_counts[t]:.0f})" for t in missing[:8])
            problems.append(f"{missing.size} tokens never drawn despite an expected count >= "
                            f"{MISSING_EXPECTED}: {listed}")
        if not self.pvalue >= self.alpha:
            problems.append(f"chi-square {self.statistic:.4g} on {self.dof} dof: p-value {self.pvalue:.3g} "
                            f"< alpha {self.alpha:.3g}")
        return tuple(problems)

    @property
    def passed(self) -> bool:
        """True when the draws pass every check at level ``alpha`` (`problems` is empty)."""
        return not self.problems

    def residuals(self) -> np.ndarray:
        """Standardized residuals ``(observed - expected) / sqrt(expected)`` per cell."""
        return (self.observed - self.expected) / np.sqrt(self.expected)

    def worst_cells(self, k: int = 5) -> str:
        """The ``k`` cells with the largest absolute residual, one line each."""
        residual = self.residuals()
        lines = []
        for c in np.argsort(-np.abs(residual), kind="stable")[:k]:
            tokens = self.cells[c]
            shown = ", ".join(str(int(t)) for t in tokens[:4])
            label = f"token {shown}" if tokens.size == 1 else f"{tokens.size} tokens ({shown}"
            label += "" if tokens.size == 1 else (", ...)" if tokens.size > 4 else ")")
            lines.append(f"cell {c:>3}  {label:<32} observed {int(self.observed[c]):>9}  "
                         f"expected {self.expected[c]:>11.1f}  residual {residual[c]:+7.2f}")
        return "\n".join(lines)


def chisquare_gof(  # noqa: C901
    observed: Any,
    expected: Any,
    *,
    counts: bool = False,
    min_expected: float = MIN_EXPECTED,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> ChiSquareResult:
    """Pearson's chi-square goodness-of-fit test of draws against a token distribution.

    The cells are decided from ``expected`` and the number of draws only, never from the
    observed counts: each token whose expected count reaches ``min_expected`` is a cell of its
    own, and the rest of the support, in decreasing probability, is cut into bins of equal mass,
    each expected at least ``min_expected`` times. A draw on a token of probability zero (or an
    id outside ``[0, V)``) is impossible under the hypothesis, so it makes the p-value 0.

    Valid when the draws are independent and every cell's expected count is large. The usual
    5 is not enough at small levels: with one cell expected 5 times, 10^6 simulated tests raised
    2.6 times the nominal false alarms at level 1e-4 and 4.9 times at 1e-5; with that cell
    expected 50 times (the default), 0.97 and 1.6 times (16 alarms for 10 expected). A one-token
    support (a greedy row) has no chi-square: its p-value is 1 when every draw is that token,
    else 0.

    Args:
        observed: the draws, integer token ids of any shape; or, with ``counts=True``, the
            number of draws of each token (length ``V``).
        expected: probabilities of the ``V`` tokens, summing to 1 (within 1e-4; renormalised).
        counts: whether ``observed`` holds per-token counts rather than draws.
        min_expected: smallest expected count of a cell.
        alpha: the level at which ``detectable_tv`` is reported (the test itself reports a
            p-value; compare it with your level).
        power: the power at which ``detectable_tv`` is reported.

    Returns:
        A `ChiSquareResult`.

    Raises:
        ValueError: when the draws are too few to form two cells (the message gives the count
            that suffices), or the inputs are malformed.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.stats import chisquare_gof
        >>> p = np.array([0.5, 0.3, 0.2])
        >>> draws = np.random.default_rng(0).choice(3, size=10_000, p=p)
        >>> result = chisquare_gof(draws, p)
        >>> result.dof, result.out_of_support, bool(result.pvalue > 1e-3)
        (2, 0, True)
    """
    p = _as_probabilities(expected)
    vocab = p.size
    if counts:
        token_counts = np.asarray(observed)
        if token_counts.shape != (vocab,):
            raise ValueError(
                f"with counts=True, observed must have shape ({vocab},), got {token_counts.shape}"
            )
        if not np.issubdtype(token_counts.dtype, np.integer):
            if not np.array_equal(token_counts, np.round(token_counts)):
                raise ValueError("with counts=True, observed must hold whole numbers")
        if (token_counts < 0).any():
            raise ValueError("with counts=True, observed must be non-negative")
        token_counts = token_counts.astype(np.int64)
        outside_range = 0
    else:
        draws = np.asarray(observed).reshape(-1)
        if not np.issubdtype(draws.dtype, np.integer):
            raise TypeError(f"observed must hold integer token ids, got dtype {draws.dtype}")
        in_range = (draws >= 0) & (draws < vocab)
        outside_range = int(draws.size - np.count_nonzero(in_range))
        token_counts = np.bincount(draws[in_range].astype(np.int64), minlength=vocab)
    n = int(token_counts.sum()) + outside_range
    out_of_support = int(token_counts[p == 0].sum()) + outside_range
    if n == 0:
        raise ValueError("observed holds no draws")

    cells = _pool_cells(p, n, min_expected)
    if len(cells) < 2 and np.count_nonzero(p) > 1:
        need = _two_cell_minimum(p, min_expected)
        raise ValueError(
            f"too few samples for a chi-square test: {n} draws form {len(cells)} cell with an "
            f"expected count >= {min_expected}; at least {need} draws are needed for two cells"
        )
    cell_observed = np.array([token_counts[c].sum() for c in cells], np.int64)
    cell_expected = n * np.array([p[c].sum() for c in cells])
    tv = detectable_tv(n, power=power, alpha=alpha, cells=len(cells))

    if out_of_support:
        statistic, pvalue = math.inf, 0.0
    elif len(cells) < 2:
        statistic, pvalue = 0.0, 1.0
    else:
        from scipy import stats as st

        test = st.power_divergence(cell_observed, cell_expected, lambda_="pearson")
        statistic, pvalue = float(test.statistic), float(test.pvalue)
    return ChiSquareResult(
        statistic=statistic, pvalue=pvalue, dof=max(len(cells) - 1, 0), n=n, cells=tuple(cells),
        observed=cell_observed, expected=cell_expected, counts=token_counts, probabilities=p,
        out_of_support=out_of_support, detectable_tv=tv, alpha=alpha, power=power,
    )


# --------------------------------------------------------------------------------------------
# The assertion for test suites


def assert_samples_match(
    samples: Any,
    expected: Any,
    *,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    seed: int | None = None,
    min_expected: float = MIN_EXPECTED,
) -> list[ChiSquareResult]:
    """Assert that draws come from ``expected``; for test suites.

    Fails (``AssertionError``) when any row has a draw outside the support (zero tolerance),
    a token with an expected count of at least 64 that never appears, or a chi-square p-value
    below its level (``pvalue >= alpha`` must hold, so a NaN fails). A batch of rows shares
    ``alpha`` (Bonferroni: each row is tested at ``alpha / rows``). The default ``alpha`` is a
    suite budget of 1e-3 split over 1000 assertions. The failure message lists the worst cells
    and the seed to replay.

    When every check passes, it also requires that the draws were enough: each row's test must
    detect a total-variation distance ``tv`` with probability ``power``; otherwise it raises
    ``ValueError`` with the count needed (a pass by an underpowered test proves little).

    Args:
        samples: token ids, shape ``(n,)`` for a 1-D ``expected`` of shape ``(V,)``, or
            ``(n, *batch)`` for ``expected`` of shape ``(*batch, V)``: ``n`` draws per row.
        expected: probabilities, shape ``(V,)`` or ``(*batch, V)``.
        alpha: false-alarm probability of the whole assertion.
        tv: total-variation distance each row's test must detect.
        power: probability with which it must detect it.
        seed: the seed that produced the draws, quoted in the failure message for replay.
        min_expected: smallest expected count of a cell.

    Returns:
        One `ChiSquareResult` per row, in row-major order.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.stats import assert_samples_match
        >>> p = np.array([0.5, 0.3, 0.2, 0.0])
        >>> draws = np.random.default_rng(0).choice(4, size=60_000, p=p)
        >>> results = assert_samples_match(draws, p, seed=0)
        >>> round(results[0].detectable_tv, 3) <= 0.02
        True
    """
    p = np.asarray(expected)
    draws = np.asarray(samples)
    if p.ndim == 0:
        raise ValueError("expected must have shape (V,) or (*batch, V)")
    batch = p.shape[:-1]
    if draws.ndim == 0 or draws.shape[1:] != batch:
        raise ValueError(
            f"samples must have shape (n, *{batch}) to match expected of shape {p.shape}, "
            f"got {draws.shape}"
        )
    rows = math.prod(batch)
    p = p.reshape(rows, p.shape[-1])
    draws = draws.reshape(draws.shape[0], rows)
    row_alpha = alpha / rows

    failures, underpowered, results = [], [], []
    for r in range(rows):
        result = chisquare_gof(draws[:, r], p[r], min_expected=min_expected, alpha=row_alpha, power=power)
        results.append(result)
        if result.problems:
            where = "samples" if not batch else f"row {np.unravel_index(r, batch) if len(batch) > 1 else r}"
            detail = "\n".join(f"  {line}" for line in result.problems)
            cells = "\n".join(f"    {line}" for line in result.worst_cells().splitlines())
            failures.append(f"{where} of {rows} (n={result.n}):\n{detail}\n  worst cells:\n{cells}")
        elif result.detectable_tv > tv:
            underpowered.append((r, result))

    if failures:
        replay = f"replay with seed={seed}" if seed is not None else "no seed was given"
        shown = failures[:4] + ([f"... and {len(failures) - 4} more rows"] if len(failures) > 4 else [])
        raise AssertionError(
            f"draws do not match the expected distribution ({replay}; {SEED_OFFSET_ENV}="
            f"{os.environ.get(SEED_OFFSET_ENV, '0')}):\n" + "\n".join(shown)
        )
    if underpowered:
        r, result = underpowered[0]
        need = required_samples(tv, power=power, alpha=row_alpha, cells=max(len(result.cells), 2))
        raise ValueError(
            f"the test is underpowered: with n={result.n} draws and {len(result.cells)} cells, row {r} "
            f"detects a total-variation distance of {result.detectable_tv:.4f} with power {power} at "
            f"alpha {row_alpha:.3g}, more than tv={tv}; use about {need} draws (or a larger tv)"
        )
    return results


# --------------------------------------------------------------------------------------------
# Speculative verifiers


@dataclasses.dataclass(frozen=True)
class SpeculativeResult:
    """What `assert_speculative_matches` measured (all three checks passed when it returns).

    Attributes:
        first: the test of the first emitted token against the target's distribution at position 1.
        second: the test of the (first, second) pairs emitted after an accepted first draft against
            ``min(p1, q1)`` times the target's distribution at position 2; ``None`` when ``K == 0``.
        acceptance_rate: how often the first emitted token was the first draft.
        expected_acceptance_rate: ``sum(min(p1, q1)) = 1 - TV(p1, q1)``.
        acceptance_pvalue: two-sided binomial p-value of the acceptance count.
    """

    first: ChiSquareResult
    second: ChiSquareResult | None
    acceptance_rate: float
    expected_acceptance_rate: float
    acceptance_pvalue: float


def _draft_ids(rng: np.random.Generator, q: np.ndarray, n: int) -> np.ndarray:
    """``(n, K)`` drafts, position ``i`` drawn from ``q[i]`` by inverse CDF in float64."""
    cumulative = np.cumsum(q.astype(np.float64), axis=-1)
    u = rng.random((n, q.shape[0])) * cumulative[:, -1]
    ids = np.stack([np.searchsorted(cumulative[i], u[:, i], side="right") for i in range(q.shape[0])], axis=1)
    return np.minimum(ids, q.shape[1] - 1)


def assert_speculative_matches(
    verifier: Any,
    target_logits: Any,
    draft_probs: Any,
    n: int,
    *,
    params: SamplingParams | dict[str, Any] | None = None,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    tv: float = DEFAULT_TV,
    power: float = DEFAULT_POWER,
    chunk: int = 8192,
) -> SpeculativeResult:
    """Assert that a speculative verifier emits tokens from the target's processed distribution.

    Drafts ``K`` tokens ``n`` times from ``draft_probs`` (position ``i`` from ``draft_probs[i]``),
    calls ``verifier`` on them in chunks, and checks, at a total level ``alpha`` split over the
    three checks (Bonferroni):

    1. the first emitted token follows ``p1``, the target's processed distribution at position 1
       (`chisquare_gof`, power ``power`` against a total-variation distance ``tv`` required);
    2. after an accepted first draft, the pair (first, second) follows ``min(p1, q1) * p2``,
       normalised: the second token follows ``p2`` given the first (the pairs' joint counts);
    3. the first emitted token equals the first draft at the rate ``sum(min(p1, q1)) =
       1 - TV(p1, q1)`` (a two-sided binomial test);

    and, with zero tolerance, that no emitted token lies outside the kept set. Any verifier can
    be tested: ours, or a wrapper around another engine's.

    Args:
        verifier: ``verifier(seed, target_logits, draft_ids, draft_probs) -> tokens``, called with
            an ``int`` seed (a new one per chunk), NumPy arrays ``(b, K + 1, V)``, ``(b, K)`` and
            ``(b, K, V)``; it returns ``(b, K + 1)`` ids (``-1`` past the last emitted token), or
            anything with a ``tokens`` attribute holding them.
        target_logits: ``(K + 1, V)``, one scenario repeated for every draw.
        draft_probs: ``(K, V)``, the draft's distribution at each drafted position.
        n: how many verifier rows to draw.
        params: the target's sampling parameters (a `SamplingParams` or a dict of the sampling
            keywords), which define the expected distribution through `reference_probs`.
        seed: seed of the drafts; the verifier gets ``seed + 1 + chunk index``.
        alpha: false-alarm probability of the whole assertion.
        tv: total-variation distance the first-token test must detect with ``power``.
        power: as for `assert_samples_match`.
        chunk: rows per verifier call.

    Returns:
        A `SpeculativeResult` with what was measured.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> from agnostic_sampling.stats import assert_speculative_matches
        >>> target = np.log(np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
        >>> draft = np.array([[0.2, 0.2, 0.6]])
        >>> def ours(seed, t, d, q):
        ...     return smp.verify_draft(seed, t, d, q)
        >>> result = assert_speculative_matches(ours, target, draft, 20_000, tv=0.05)
        >>> round(result.expected_acceptance_rate, 2)
        0.6
    """
    from scipy import stats as st

    logits = np.asarray(target_logits, np.float64)
    q = np.asarray(draft_probs, np.float64)
    if logits.ndim != 2 or q.shape != (logits.shape[0] - 1, logits.shape[1]):
        raise ValueError(f"target_logits must be (K + 1, V) and draft_probs (K, V); got {logits.shape} "
                         f"and {q.shape}")
    keywords = dataclasses.asdict(params) if isinstance(params, SamplingParams) else dict(params or {})
    p = reference_probs(logits, **keywords)
    k, vocab = q.shape
    rng = np.random.default_rng(seed)
    drafts, emitted = [], []
    for index, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        ids = _draft_ids(rng, q, size) if k else np.zeros((size, 0), np.int64)
        out = verifier(seed + 1 + index, np.broadcast_to(logits, (size, *logits.shape)).astype(np.float32),
                       ids, np.broadcast_to(q, (size, k, vocab)).astype(np.float32))
        emitted.append(np.asarray(getattr(out, "tokens", out)))
        drafts.append(ids)
    tokens, ids = np.concatenate(emitted), np.concatenate(drafts)
    if tokens.shape != (n, k + 1):
        raise ValueError(f"the verifier must return tokens of shape (b, K + 1); got {tokens.shape[1:]} "
                         "per row")
    level = alpha / (3 if k else 1)

    first = assert_samples_match(tokens[:, 0], p[0], alpha=level, tv=tv, power=power, seed=seed)[0]
    if not k:
        return SpeculativeResult(first, None, 0.0, 0.0, 1.0)
    accepted = tokens[:, 0] == ids[:, 0]
    expected_rate = float(np.minimum(p[0], q[0] / q[0].sum()).sum())
    test = st.binomtest(int(accepted.sum()), n, min(expected_rate, 1.0))
    if not test.pvalue >= level:
        raise AssertionError(
            f"the first draft was accepted {accepted.mean():.4f} of the time, expected "
            f"{expected_rate:.4f} = 1 - TV(p1, q1): binomial p-value {test.pvalue:.3g} < {level:.3g} "
            f"(replay with seed={seed})"
        )
    joint = np.outer(np.minimum(p[0], q[0] / q[0].sum()), p[1]).reshape(-1)
    joint /= joint.sum()
    pairs = tokens[accepted]
    second_ok = (pairs[:, 1] >= 0) & (pairs[:, 1] < vocab)
    cells = np.where(second_ok, pairs[:, 0] * vocab + pairs[:, 1], -1)
    second = assert_samples_match(cells, joint, alpha=level, tv=1.0, power=power, seed=seed)[0]
    return SpeculativeResult(first, second, float(accepted.mean()), expected_rate, float(test.pvalue))
