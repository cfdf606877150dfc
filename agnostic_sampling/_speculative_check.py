"""`assert_speculative_matches`: a statistical test of any speculative verifier.

Re-exported by `agnostic_sampling.stats`; its docstring states the three checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agnostic_sampling._chisquare import ChiSquareResult
from agnostic_sampling._chisquare import assert_samples_match
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._reference import reference_probs
from agnostic_sampling._sizing import DEFAULT_ALPHA
from agnostic_sampling._sizing import DEFAULT_POWER
from agnostic_sampling._sizing import DEFAULT_TV

__all__ = ["SpeculativeResult", "assert_speculative_matches"]



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
