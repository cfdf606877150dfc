"""Pearson's chi-square goodness-of-fit test on cells pooled from the expected probabilities.

`chisquare_gof`, its `ChiSquareResult`, and `assert_samples_match` (the test per row, for test
suites), re-exported by `agnostic_sampling.stats`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from agnostic_sampling._sizing import DEFAULT_ALPHA
from agnostic_sampling._sizing import DEFAULT_POWER
from agnostic_sampling._sizing import DEFAULT_TV
from agnostic_sampling._sizing import MIN_EXPECTED
from agnostic_sampling._sizing import MISSING_EXPECTED
from agnostic_sampling._sizing import SEED_OFFSET_ENV
from agnostic_sampling._sizing import detectable_tv
from agnostic_sampling._sizing import required_samples

__all__ = ["ChiSquareResult", "assert_samples_match", "chisquare_gof"]



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
