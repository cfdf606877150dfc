"""The truncation steps after min-p, written once for NumPy and JAX arrays (private).

In the default order (README "Semantics"): typical-p, epsilon, eta, top-n-sigma, then XTC. Each
step reads its row's distribution ``q = softmax(z)`` over the kept set ``K`` (the finite ``z``),
keeps a subset of ``K`` and passes it on, so a later step sees the set an earlier one left:

- typical-p ``p``: with ``H = -sum(q log q)``, each token scores ``s = |-log q - H|``; keep the
  tokens with ``s <= s*``, ``s*`` the smallest score whose set ``{s <= s*}`` has mass ``>= p``
  (ties kept);
- epsilon ``e``: keep ``q >= e``;
- eta ``n``: keep ``q >= min(n, sqrt(n) * exp(-H))``;
- top-n-sigma ``n``: keep ``z >= max(z) - n * std(z)``, mean and (population) deviation over
  ``K``, so the step does not depend on the temperature;
- XTC (threshold ``t``, probability ``P``): with ``A = {q >= t}`` of two tokens or more, the
  tokens more probable than the least probable of ``A`` are excluded with probability ``P``:
  the result is the mixture ``(1 - P) q + P q_X``, ``q_X`` being ``q`` renormalised over what
  remains (ties with that least probable token remain too). Skipped when fewer than
  ``min_keep`` tokens would remain.

``min_keep`` holds for each step as for the others: typical-p keeps at least the ``min_keep``
most typical tokens (smallest scores, ties kept: Hugging Face's rule), epsilon, eta and
top-n-sigma at least the ``min_keep`` highest logits of the set they received (ties kept).

The backends call `refine` on their processed logits when `present` says a step is asked for;
two searches are theirs, passed in as `Searches`: the typical set's bound and the ``n``-th
largest value of each row. The result is shifted so that each row's largest kept logit is 0.
Under ``jit`` bad values follow the traced policy of the README's "Bad input" table: a NaN turns
the step off for the row, ``typical_p``, ``epsilon``, ``eta`` and the XTC values are clipped to
``[0, 1]``, a negative ``top_n_sigma`` is off.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._params import OFF
from agnostic_sampling._params import STRATEGY_FIELDS
from agnostic_sampling._params import SamplingParams


class Searches(NamedTuple):
    """The two searches a backend provides, on rows ``(N, V)``; parameters ``(N,)``.

    ``typical_bound(log_q, entropy, p)``: the smallest score ``s`` whose set
    ``{|log q + H| <= s}`` has mass at least ``p`` times the row's (``+inf`` when none has, from
    rounding). ``nth_largest(v, n)``:
    the ``n``-th largest value of each row, ties counted (``-inf`` when the row holds fewer than
    ``n`` finite values; values are ``<= 0``, the row maximum 0). ``top_p_bound(z, p)`` (for
    `_chain`): the smallest ``t`` with ``sum(exp(z) over z > t) < p * sum(exp(z))``, ``z <= 0``
    with maximum 0.
    """

    typical_bound: Any
    nth_largest: Any
    top_p_bound: Any


class StrategyRows(NamedTuple):
    """Each step's parameter per row after the traced policy, ``(N,)``, or ``None`` (left out)."""

    typical_p: Any
    epsilon: Any
    eta: Any
    top_n_sigma: Any
    xtc_threshold: Any
    xtc_probability: Any
    min_keep: Any  # None when 1 everywhere (concretely)


def without(params: SamplingParams) -> SamplingParams:
    """``params`` with these steps off (built without ``__post_init__``: traced values pass)."""
    out = object.__new__(SamplingParams)
    for name in SamplingParams.__dataclass_fields__:
        object.__setattr__(out, name, None if name in STRATEGY_FIELDS else getattr(params, name))
    return out


def present(params: SamplingParams) -> bool:
    """Whether ``params`` asks for any of these steps (static: depends on ``None``-ness only)."""
    return any(getattr(params, name) is not None for name in STRATEGY_FIELDS)


def rows(params: SamplingParams, batch_shape: tuple[int, ...], dtype: Any, xp: Any,
         min_keep_on: bool) -> StrategyRows:
    """The per-row parameters, in compute precision ``dtype``, with the traced policy applied."""

    def column(name: str) -> Any:
        value = getattr(params, name)
        if value is None:
            return None
        array = xp.asarray(value).astype(dtype)
        return xp.reshape(xp.broadcast_to(array, batch_shape), (-1,))

    def unit(name: str) -> Any:
        value = column(name)
        if value is None:
            return None
        return xp.where(xp.isnan(value), OFF[name], xp.clip(value, 0, 1))

    sigma = column("top_n_sigma")
    if sigma is not None:
        sigma = xp.where(sigma >= 0, sigma, np.inf)  # NaN and negative: off
    probability = unit("xtc_probability")
    threshold = unit("xtc_threshold")
    if (probability is None) != (threshold is None):
        probability = threshold = None  # validation asks for both; a traced call gets no XTC
    min_keep = None
    if min_keep_on:
        min_keep = xp.maximum(xp.reshape(xp.broadcast_to(xp.asarray(params.min_keep), batch_shape), (-1,)), 1)
    return StrategyRows(unit("typical_p"), unit("epsilon"), unit("eta"), sigma, threshold, probability,
                        min_keep)


class _Row(NamedTuple):
    """The distribution of each row over its kept set."""

    kept: Any  # (N, V) bool: finite z
    log_q: Any  # (N, V) log-probabilities, -inf outside the kept set
    entropy: Any  # (N,)


def _distribution(z: Any, xp: Any) -> _Row:
    kept = z > -np.inf
    top = xp.max(z, axis=-1)
    top = xp.where(top > -np.inf, top, 0)
    shifted = z - top[:, None]
    total = xp.sum(xp.exp(shifted), axis=-1)
    log_total = xp.log(xp.where(total > 0, total, 1))
    log_q = shifted - log_total[:, None]
    q = xp.exp(log_q)
    entropy = -xp.sum(xp.where(kept, q * xp.where(kept, log_q, 0), 0), axis=-1)
    return _Row(kept, log_q, entropy)


def _cut(z: Any, keep: Any, on: Any, xp: Any) -> Any:
    """``z`` with ``-inf`` outside ``keep`` on the rows where the step is ``on``."""
    return xp.where(on[:, None] & ~keep, -np.inf, z)


def _with_floor(z: Any, keep: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    """``keep`` plus the ``min_keep`` highest logits of the set received (ties kept)."""
    top = xp.max(z, axis=-1)
    if min_keep is None:
        return keep | (z >= top[:, None])
    floor = searches.nth_largest(z - xp.where(top > -np.inf, top, 0)[:, None], min_keep)
    return keep | (z >= (floor + xp.where(top > -np.inf, top, 0))[:, None])


def _typical(z: Any, p: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    row = _distribution(z, xp)
    score = xp.where(row.kept, xp.abs(row.log_q + row.entropy[:, None]), np.inf)
    bound = xp.maximum(searches.typical_bound(row.log_q, row.entropy, p), xp.min(score, axis=-1))
    if min_keep is not None:  # the min_keep most typical: the n-th smallest score
        bound = xp.maximum(bound, -searches.nth_largest(-score, min_keep))
    return _cut(z, score <= bound[:, None], p < 1, xp)


def _floor_of_q(z: Any, log_floor: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    """Keep ``log q >= log_floor`` per row (``-inf``: keep all), with the min_keep floor."""
    row = _distribution(z, xp)
    keep = _with_floor(z, row.log_q >= log_floor[:, None], min_keep, searches, xp)
    return _cut(z, keep, log_floor > -np.inf, xp)


def _eta_floor(z: Any, eta: Any, xp: Any) -> Any:
    entropy = _distribution(z, xp).entropy
    log_eta = xp.log(xp.where(eta > 0, eta, 1))
    return xp.where(eta > 0, xp.minimum(log_eta, 0.5 * log_eta - entropy), -np.inf)


def _sigma(z: Any, n: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    kept = z > -np.inf
    count = xp.sum(kept, axis=-1)
    count = xp.where(count > 0, count, 1).astype(z.dtype)
    top = xp.max(z, axis=-1)
    centred = xp.where(kept, z, 0)
    mean = xp.sum(centred, axis=-1) / count
    spread = xp.where(kept, z - mean[:, None], 0)
    std = xp.sqrt(xp.sum(spread * spread, axis=-1) / count)
    on = n < np.inf
    floor = top - xp.where(on, n, 0) * std
    keep = _with_floor(z, z >= floor[:, None], min_keep, searches, xp)
    return _cut(z, keep, on, xp)


def _xtc(z: Any, threshold: Any, probability: Any, min_keep: Any, xp: Any) -> Any:
    row = _distribution(z, xp)
    log_t = xp.log(xp.where(threshold > 0, threshold, 1))
    above = row.kept & (xp.where(threshold[:, None] > 0, row.log_q >= log_t[:, None], True))
    least = xp.min(xp.where(above, z, np.inf), axis=-1)  # the least probable token of A
    remain = row.kept & (z <= least[:, None])
    needed = 1 if min_keep is None else min_keep
    on = (probability > 0) & (xp.sum(above, axis=-1) >= 2) & (xp.sum(remain, axis=-1) >= needed)
    q = xp.exp(row.log_q)
    remain_mass = xp.sum(xp.where(remain, q, 0), axis=-1)
    q_x = xp.where(remain, q / xp.where(remain_mass > 0, remain_mass, 1)[:, None], 0)
    mixed = (1 - probability[:, None]) * q + probability[:, None] * q_x
    with np.errstate(divide="ignore"):  # NumPy: log(0) is -inf, as meant
        mixed_log = xp.where(mixed > 0, xp.log(xp.where(mixed > 0, mixed, 1)), -np.inf)
    return xp.where(on[:, None], mixed_log, z)


def refine(z: Any, strategy: StrategyRows, searches: Searches, xp: Any) -> Any:
    """``z`` (N, V) after each step that ``strategy`` turns on, in order; each row's maximum 0."""
    if strategy.typical_p is not None:
        z = _typical(z, strategy.typical_p, strategy.min_keep, searches, xp)
    if strategy.epsilon is not None:
        eps = strategy.epsilon
        log_eps = xp.where(eps > 0, xp.log(xp.where(eps > 0, eps, 1)), -np.inf)
        z = _floor_of_q(z, log_eps, strategy.min_keep, searches, xp)
    if strategy.eta is not None:
        z = _floor_of_q(z, _eta_floor(z, strategy.eta, xp), strategy.min_keep, searches, xp)
    if strategy.top_n_sigma is not None:
        z = _sigma(z, strategy.top_n_sigma, strategy.min_keep, searches, xp)
    if strategy.xtc_probability is not None:
        z = _xtc(z, strategy.xtc_threshold, strategy.xtc_probability, strategy.min_keep, xp)
    top = xp.max(z, axis=-1)
    return z - xp.where(top > -np.inf, top, 0)[:, None]


def adjust_logprobs(fields: list[Any], z: Any, refined: Any, ids: Any, kind: str, xp: Any,
                    top_n_of: Any) -> tuple[Any, ...]:
    """The pipeline's `logprobs` fields (rows first), moved to the refined distribution.

    ``z`` and ``refined`` are the processed rows ``(N, V)`` before and after `refine`. The rank
    (by logit) stays; the kept set's count and log mass are the refined set's, and with
    ``kind="processed"`` so are the token's log-probability and the top-n (``top_n_of(log_q)``:
    values and ids, descending, ties by smaller id). A NaN token (an id out of range under
    ``jit``) stays NaN.
    """
    token, rank, top_ids, top_logprobs, kept_log_mass, kept_count = fields
    kept = refined > -np.inf
    q = xp.exp(_distribution(z, xp).log_q)
    mass = xp.sum(xp.where(kept, q, 0), axis=-1)
    extra = xp.log(xp.where(mass > 0, mass, 1)).astype(kept_log_mass.dtype)
    kept_log_mass = xp.minimum(kept_log_mass + extra, 0)
    kept_count = xp.sum(kept, axis=-1).astype(kept_count.dtype)
    if kind == "processed":
        log_q = _distribution(refined, xp).log_q.astype(token.dtype)
        at = xp.clip(ids, 0, z.shape[-1] - 1)[:, None]
        token = xp.where(xp.isnan(token), np.nan, xp.take_along_axis(log_q, at, axis=-1)[:, 0])
        if top_logprobs.shape[-1]:
            top_logprobs, top_ids = top_n_of(log_q)
            top_ids = top_ids.astype(rank.dtype if hasattr(rank, "dtype") else top_ids.dtype)
    return token, rank, top_ids, top_logprobs, kept_log_mass, kept_count


# --------------------------------------------------------------------------------------------
# The NumPy backend's searches (sort-based; the JAX ones are in `_jax_strategies`)


def _first_at_least(rows: np.ndarray, value: np.ndarray, strict: bool) -> np.ndarray:
    """Per row of ascending ``rows`` (N, V): the first index whose entry is ``>= value``.

    ``> value`` when ``strict``; by a bisection run on all rows at once.
    """
    n_rows, vocab = rows.shape
    every = np.arange(n_rows)
    lo, hi = np.zeros(n_rows, np.int64), np.full(n_rows, vocab, np.int64)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        entry = rows[every, np.minimum(mid, vocab - 1)]
        below = (entry <= value) if strict else (entry < value)
        active = lo < hi
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return lo


def _numpy_typical_bound(log_q: np.ndarray, entropy: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The typical bound from one sort of each row's log-probabilities (no sort by score).

    Prefix masses, then a bisection on the bound's float32 bit pattern: the mass within ``s`` of
    ``-H`` is a difference of two prefix masses, found by bisections of the sorted row.
    """
    ordered = np.sort(log_q, axis=-1).astype(np.float64)
    prefix = np.zeros((ordered.shape[0], ordered.shape[1] + 1))
    np.cumsum(np.exp(ordered), axis=-1, out=prefix[:, 1:])
    every = np.arange(ordered.shape[0])
    target = p * prefix[:, -1]
    centre = -entropy.astype(np.float64)
    lo = np.full(ordered.shape[0], -1, np.int64)  # the bit patterns of float32 bounds >= 0
    hi = np.full(ordered.shape[0], np.float32(np.inf).view(np.int32), np.int64)
    done = p >= 1
    while np.any(~done & (hi - lo > 1)):
        mid = (lo + hi) // 2
        bound = mid.astype(np.int32).view(np.float32).astype(np.float64)
        inside = (prefix[every, _first_at_least(ordered, centre + bound, strict=True)]
                  - prefix[every, _first_at_least(ordered, centre - bound, strict=False)])
        enough = inside >= target
        active = ~done & (hi - lo > 1)
        hi = np.where(active & enough, mid, hi)
        lo = np.where(active & ~enough, mid, lo)
    return hi.astype(np.int32).view(np.float32).astype(log_q.dtype)


def _numpy_nth_largest(values: np.ndarray, n: np.ndarray) -> np.ndarray:
    descending = -np.sort(-values, axis=-1)
    at = np.take_along_axis(descending, np.minimum(n - 1, values.shape[-1] - 1)[:, None], -1)[:, 0]
    return np.where(n <= values.shape[-1], at, -np.inf)


def _numpy_top_p_bound(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Sort-based: the mass strictly above each token is the mass before its tie group."""
    descending = -np.sort(-z, axis=-1)
    weight = np.exp(descending.astype(np.float64))
    before = np.cumsum(weight, axis=-1) - weight
    starts = np.ones(z.shape, bool)
    starts[:, 1:] = descending[:, 1:] != descending[:, :-1]
    group_before = np.maximum.accumulate(np.where(starts, before, -np.inf), axis=-1)
    count = np.maximum(np.sum(group_before < (p * weight.sum(axis=-1))[:, None], axis=-1), 1)
    return np.take_along_axis(descending, (count - 1)[:, None], -1)[:, 0]


NUMPY_SEARCHES = Searches(_numpy_typical_bound, _numpy_nth_largest, _numpy_top_p_bound)
