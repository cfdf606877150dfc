"""Each row's exact threshold without sorting the vocabulary (private to the JAX backend).

Every truncation step keeps an *upper set* of the row (the tokens whose tempered logit ``z`` is
at least some threshold), so one threshold per row decides it:

- top-k (and min_keep): the largest ``t`` with ``count(z >= t) >= k``;
- top-p: the smallest ``t`` with ``sum(exp(z) over z > t) < p * sum(exp(z) over the kept set)``;
- min-p: ``t = log(min_p)``, no search (the row maximum is 0 after the shift).

Over whole rows, the search runs on the float's bit pattern made monotone, so it ends on adjacent
floats whatever the values; each pass tests four thresholds with one fused masked reduction (a
5-ary search, `_search` and `_row_sums`). From 8192 tokens the thresholds are first found among
*candidates*, the 64 blocks of 32 tokens with the largest maxima: every other token is at most
``bound``, the smallest maximum picked, so a threshold found there is exact once it is shown to
lie above ``bound`` (`_candidate_threshold`). Rows where that fails are searched whole, gathered
in chunks of rows (`_for_rows`).
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling.backends._jax_common import _block_width
from agnostic_sampling.backends._jax_common import _cleaned
from agnostic_sampling.backends._jax_common import _count
from agnostic_sampling.backends._jax_common import _Prepared
from agnostic_sampling.backends._jax_common import _Rows
from agnostic_sampling.backends._jax_common import _Steps
from agnostic_sampling.backends._jax_common import _tempered

# --------------------------------------------------------------------------------------------
# Exact thresholds by a search on the monotone bit pattern


def _int_dtype(dtype: Any) -> Any:
    return jnp.int64 if dtype == jnp.float64 else jnp.int32


def _to_key(value: jax.Array) -> jax.Array:
    """Integer whose order is the float order (-0.0 just below +0.0); NaN-free input."""
    bits = lax.bitcast_convert_type(value, _int_dtype(value.dtype))
    magnitude = jnp.asarray(np.iinfo(bits.dtype).max, bits.dtype)
    return jnp.where(bits < 0, bits ^ magnitude, bits)


def _from_key(key: jax.Array, dtype: Any) -> jax.Array:
    magnitude = jnp.asarray(np.iinfo(key.dtype).max, key.dtype)
    return lax.bitcast_convert_type(jnp.where(key < 0, key ^ magnitude, key), dtype)


_PROBES = 4  # thresholds tested per pass: XLA:CPU fuses them into one loop that costs about one


def _probes(vocab: int) -> int:
    """Thresholds per search pass: several when `_row_sums` can fuse them, else one."""
    return _PROBES if _block_width(vocab) else 1


def _row_sums(operands: list[jax.Array]) -> jax.Array:
    """Row sums of several (N, V) arrays, as (N, len(operands)), in about one pass.

    Each row is cut into blocks of `_block_width` tokens; one variadic reduce sums every operand's
    blocks (XLA:CPU fuses the element-wise work of all operands into one loop), then XLA's tree
    reduction adds the block sums. Blocks keep masses accurate (a fused reduce over the whole row
    adds in sequence, which loses precision on long rows) and keep sharding cheap: blocks never
    straddle an even split of the vocabulary, so the only collective is an all-reduce of one
    scalar per row and operand (a variadic reduce across devices would be all-gathered instead).
    Without such blocks, one reduction per operand.
    """
    rows, vocab = operands[0].shape
    block = _block_width(vocab)
    if not block:
        return jnp.stack([jnp.sum(x, axis=-1) for x in operands], axis=-1)
    blocks = tuple(x.reshape(rows, -1, block) for x in operands)
    zero = jnp.zeros((), operands[0].dtype)
    parts = lax.reduce(blocks, (zero,) * len(blocks),
                       lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)), (2,))
    return jnp.stack([jnp.sum(part, axis=-1) for part in parts], axis=-1)


def _search(lo: jax.Array, hi: jax.Array, done: jax.Array, step: Any, probes: int,
            first: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Shrink integer brackets ``[lo, hi]`` until adjacent (or ``done``), all rows in lock step.

    Each pass tests ``probes`` points spread over the bracket, so it shrinks by a factor of
    ``probes + 1``. ``step(points) -> (go_up, finished)``, both (N, probes): ``go_up`` (monotone:
    true below the answer) moves ``lo`` up to a point, otherwise ``hi`` comes down to it;
    ``finished`` marks a point at which the answer is already exact. Spans stay below the
    integer range (the keys of -inf and +0.0 differ by < 2**31 - 1). ``first`` (N, probes), when
    given, are the points of the first pass instead (a guess; any points are correct).
    """

    def narrow(carry: tuple[jax.Array, ...], points: jax.Array) -> tuple[jax.Array, ...]:
        lo, hi, done = carry
        points = jnp.clip(points, lo[:, None] + 1, jnp.maximum(hi - 1, lo + 1)[:, None])
        go_up, finished = step(points)
        new_hi = jnp.minimum(hi, jnp.min(jnp.where(go_up, hi[:, None], points), axis=-1))
        below = go_up & (points < new_hi[:, None])  # a non-monotone answer cannot cross the bracket
        new_lo = jnp.maximum(lo, jnp.max(jnp.where(below, points, lo[:, None]), axis=-1))
        at_lo = jnp.any(below & finished & (points == new_lo[:, None]), axis=-1)
        active = ~done & (hi - lo > 1)
        return jnp.where(active, new_lo, lo), jnp.where(active, new_hi, hi), done | (active & at_lo)

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        lo, hi, done = carry
        return jnp.any(~done & (hi - lo > 1))

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        lo, hi, _ = carry
        span = (hi - lo)[:, None]
        part = jnp.arange(1, probes + 1, dtype=lo.dtype)
        # lo + span * j / (probes + 1) without overflowing the integer type; strictly inside.
        return narrow(carry, lo[:, None] + (span // (probes + 1)) * part
                      + (span % (probes + 1)) * part // (probes + 1))

    carry = (lo, hi, done)
    if first is not None:
        carry = narrow(carry, first)
    lo, hi, _ = lax.while_loop(cond, body, carry)
    return lo, hi


def _counts(z: jax.Array, thresholds: jax.Array) -> jax.Array:
    """``count(z >= t)`` per row for each column ``t`` of ``thresholds`` (N, P).

    Float32 sums are exact below 2**24 tokens (int32 above).
    """
    dtype = jnp.float32 if z.shape[-1] < 2**24 else jnp.int32
    return _row_sums([(z >= thresholds[:, j, None]).astype(dtype) for j in range(thresholds.shape[1])])


def _masses(z: jax.Array, weight: jax.Array, thresholds: jax.Array) -> jax.Array:
    """``sum(weight over z > t)`` per row for each column ``t`` of ``thresholds`` (N, P)."""
    return _row_sums([jnp.where(z > thresholds[:, j, None], weight, 0) for j in range(thresholds.shape[1])])


def _kth_largest(z: jax.Array, k: jax.Array, skip: jax.Array) -> jax.Array:
    """The k-th largest value of each row (ties counted), -inf when the row has fewer than k.

    The largest ``t`` with ``count(z >= t) >= k``; a row is finished early when exactly ``k``
    tokens are at or above ``t``, since then ``{z >= t}`` is already the top-k set. For
    ``k == 1`` the answer is the row maximum, 0, with no search (the usual ``min_keep``).
    """
    dtype = z.dtype
    first = k <= 1
    k = k.astype(jnp.float32 if z.shape[-1] < 2**24 else jnp.int32)[:, None]

    def step(probes: jax.Array) -> tuple[jax.Array, jax.Array]:
        count = _counts(z, _from_key(probes, dtype))
        return count >= k, count == k

    lo = jnp.broadcast_to(_to_key(jnp.asarray(-jnp.inf, dtype)), k.shape[:1])
    hi = _to_key(jnp.zeros(k.shape[:1], dtype)) + 1  # above the row maximum, 0
    lo, _ = _search(lo, hi, skip | first, step, _probes(z.shape[-1]))
    return jnp.where(first & ~skip, 0, _from_key(lo, dtype))


def _top_p_threshold(z: jax.Array, weight: jax.Array, floor: jax.Array, top_p: jax.Array,
                     skip: jax.Array, total: jax.Array | None = None,
                     below: jax.Array | None = None) -> jax.Array:
    """Smallest ``t`` with ``sum(weight over z > t) < top_p * total``.

    ``total`` is ``sum(weight over z >= floor)`` unless given. Tokens at or above the result are those whose
    strictly-more-probable mass is below ``p``; the row maximum (0) is the largest possible answer, so ``p ==
    0`` keeps the top token(s).

    ``below`` (N,), when given, is a value the answer is expected to lie at or below (the candidates'
    bound, when they did not hold the nucleus): the first pass tests it and ``probes - 1`` points
    evenly under it, so a right guess drops at once the keys between it and 0, most of the span
    (about 2 of 13 passes on flat rows), and a wrong one costs one pass.
    """
    dtype = z.dtype
    if total is None:
        total = jnp.sum(weight * (z >= floor[:, None]), axis=-1)
    target = (top_p * total)[:, None]

    def step(probes: jax.Array) -> tuple[jax.Array, jax.Array]:
        mass_above = _masses(z, weight, _from_key(probes, dtype))
        return ~(mass_above < target), jnp.zeros(probes.shape, bool)

    # Just below the smallest received value the mass above is everything received, which is
    # never < p * itself. (Starting there rather than at -inf saves the passes that would
    # cross the binades below it: 2-3 of 14 on realistic rows.)
    lowest = jnp.min(jnp.where((z >= floor[:, None]) & (z > -jnp.inf), z, jnp.inf), axis=-1)
    hi = _to_key(jnp.zeros_like(floor))
    lo = jnp.where(lowest < jnp.inf, _to_key(jnp.minimum(lowest, 0).astype(dtype)) - 1, hi - 1)
    first = None
    probes = _probes(z.shape[-1])
    if below is not None:
        guess = jnp.clip(_to_key(below.astype(dtype)), lo, hi)[:, None]
        part = jnp.arange(1, probes + 1, dtype=lo.dtype)
        first = lo[:, None] + ((guess - lo[:, None]) // probes) * part
        first = first.at[:, -1].set(guess[:, 0])
    _, hi = _search(lo, hi, skip, step, probes, first)
    return _from_key(hi, dtype)


def _threshold(z: jax.Array, weight: jax.Array | None, rows: _Rows, steps: _Steps,
               skip: jax.Array, below: jax.Array | None = None) -> jax.Array:
    """Each row's final threshold: the kept set is the finite ``z`` at or above it (README: Semantics).

    ``below`` is the top-p search's guess (see `_top_p_threshold`).
    """
    dtype = z.dtype
    minus_inf = jnp.full(z.shape[:1], -jnp.inf, dtype)
    needs_min_keep = steps.min_keep and (steps.top_p or steps.min_p)
    # The min_keep floor v_n: the n-th largest; with n == 1 everywhere it is the maximum, 0.
    keep_floor = _kth_largest(z, rows.min_keep, skip) if needs_min_keep else jnp.zeros_like(minus_inf)

    threshold = minus_inf
    if steps.top_k:
        on = rows.top_k > 0
        kth = _kth_largest(z, jnp.maximum(rows.top_k, rows.min_keep), skip | ~on)
        threshold = jnp.where(on, kth, threshold)
    if steps.top_p:
        on = rows.top_p < 1
        nucleus = _top_p_threshold(z, weight, threshold, rows.top_p, skip | ~on, below=below)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(nucleus, keep_floor)), threshold)
    if steps.min_p:
        on = rows.min_p > 0
        floor = jnp.log(rows.min_p)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(floor, keep_floor)), threshold)
    return threshold


# --------------------------------------------------------------------------------------------
# Candidates: the thresholds from a few blocks of the row, with a proof that they are exact

_CANDIDATE_BLOCK = 32
_CANDIDATE_BLOCKS = 64


def _candidate_block(vocab: int) -> int:
    """Block width for candidates, 0 when the row is too short (or not a multiple of it) to gain."""
    if vocab % _CANDIDATE_BLOCK or vocab // _CANDIDATE_BLOCK < 4 * _CANDIDATE_BLOCKS:
        return 0
    return _CANDIDATE_BLOCK


class _Candidates(NamedTuple):
    z: jax.Array  # (N, C) tempered candidate logits, in vocabulary order
    index: jax.Array  # (N, C) int32 their token ids
    bound: jax.Array  # (N,) every token outside the candidates has z <= bound
    x: jax.Array  # (N, C) the candidates' cleaned logits, untempered
    x_bound: jax.Array  # (N,) every token outside the candidates has a cleaned logit <= x_bound


def _candidates(prep: _Prepared, steps: _Steps) -> _Candidates:
    rows, vocab = prep.raw.shape
    block = _candidate_block(vocab)
    values, chosen = lax.top_k(prep.block_max, _CANDIDATE_BLOCKS)
    chosen = jnp.sort(chosen, axis=-1)
    raw = jnp.take_along_axis(prep.raw.reshape(rows, -1, block), chosen[:, :, None], axis=1)
    raw = raw.reshape(rows, -1)
    x = _cleaned(raw, prep.posinf, prep.row_max.dtype)
    z = _tempered(x, prep.shift, prep.rows.temperature, steps)
    # The smallest of the k values as a reduction: a slice of the last one would stop XLA:CPU
    # from recognising top_k (it then sorts all the block maxima).
    smallest = jnp.min(values, axis=-1, keepdims=True)
    bound = _tempered(smallest, prep.shift, prep.rows.temperature, steps)[:, 0]
    index = (chosen[:, :, None] * block + jnp.arange(block, dtype=jnp.int32)).reshape(rows, -1)
    return _Candidates(z, index, bound, x, smallest[:, 0])


def _candidate_threshold(cand: _Candidates, rows: _Rows, steps: _Steps, skip: jax.Array,
                         row_mass: Any) -> tuple[jax.Array, jax.Array]:
    """Each row's threshold from its candidates, and whether it is proven exact (see the module docstring).

    ``row_mass()`` gives ``sum(exp(z))`` over whole rows; called (under a ``lax.cond``) only when
    some row has top-p on and top-k off, the one case that needs the whole row's mass.
    """
    z, bound = cand.z, cand.bound
    minus_inf = jnp.full(z.shape[:1], -jnp.inf, z.dtype)
    above = z > bound[:, None]
    n_above = _count(above)
    exact = jnp.ones(z.shape[:1], bool)

    def enough(k: jax.Array) -> jax.Array:
        return (k <= 1) | (n_above >= k.astype(n_above.dtype))

    truncating = jnp.zeros_like(exact)  # a step that min_keep guards is on for the row
    if steps.top_p:
        truncating |= rows.top_p < 1
    if steps.min_p:
        truncating |= rows.min_p > 0
    keep_floor = jnp.zeros_like(minus_inf)
    if steps.min_keep and (steps.top_p or steps.min_p):
        keep_floor = _kth_largest(z, rows.min_keep, skip | ~truncating)
        exact &= ~truncating | enough(rows.min_keep)

    threshold = minus_inf
    top_k_on = jnp.zeros_like(exact)
    if steps.top_k:
        top_k_on = rows.top_k > 0
        k = jnp.maximum(rows.top_k, rows.min_keep)
        threshold = jnp.where(top_k_on, _kth_largest(z, k, skip | ~top_k_on), threshold)
        exact &= ~top_k_on | enough(k)
    if steps.top_p:
        on = rows.top_p < 1
        weight = jnp.exp(z)
        received = jnp.sum(jnp.where(z >= threshold[:, None], weight, 0), axis=-1)
        needs_row = on & ~top_k_on & ~skip
        whole = lax.cond(jnp.any(needs_row), row_mass, lambda: jnp.zeros_like(received))
        total = jnp.where(top_k_on, received, whole)
        mass_above = jnp.sum(jnp.where(above & (z >= threshold[:, None]), weight, 0), axis=-1)
        exact &= ~on | ~(mass_above < rows.top_p * total)
        nucleus = _top_p_threshold(z, weight, threshold, rows.top_p, skip | ~on, total)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(nucleus, keep_floor)), threshold)
    if steps.min_p:
        on = rows.min_p > 0
        floor = jnp.minimum(jnp.log(rows.min_p), keep_floor)
        threshold = jnp.where(on, jnp.maximum(threshold, floor), threshold)
    return threshold, exact | skip


# --------------------------------------------------------------------------------------------
# Whole rows for the rows that need them, gathered in chunks

_CHUNK = 2**20  # tokens per chunk of rows for whole-row work: 8 rows of 128256 (~4 MB a copy)


def _take_rows(prep: _Prepared, index: jax.Array | None) -> _Prepared:
    """The rows ``index`` of every per-row array of ``prep`` (all of them for None)."""
    return prep if index is None else jax.tree_util.tree_map(lambda a: a[index], prep)


def _for_rows(need: jax.Array, compute: Any, default: jax.Array, vocab: int) -> jax.Array:
    """``compute(index, active)`` for the rows that ``need`` it, ``default`` elsewhere (N,).

    ``compute`` gets row indices (R,) and which of them are needed (R,), and returns one value
    per index; indices None mean every row, in order. The needed rows are gathered in chunks of
    ``R`` rows of ``vocab`` tokens (about `_CHUNK` tokens), one loop iteration per chunk, so the
    whole-row work scales with the rows that need it (typically a row or two with a flat
    distribution), not with the batch, and a chunk's arrays stay in cache through the passes of
    a search. A batch that fits one chunk is computed at once, the rows not needed skipped
    inside the searches. (Under a batch-sharded layout the gather moves the needed rows between
    devices.)
    """
    rows = need.shape[0]
    size = max(1, _CHUNK // vocab)
    if size >= rows:
        return jnp.where(need, compute(None, need), default)
    # Needed rows first; the padding index ``rows`` is out of range, dropped by the scatter.
    order = jnp.nonzero(need, size=rows + size, fill_value=rows)[0].astype(jnp.int32)
    count = jnp.sum(need.astype(jnp.int32))

    def chunk(i: jax.Array, out: jax.Array) -> jax.Array:
        index = lax.dynamic_slice(order, (i * size,), (size,))
        active = index < rows
        values = compute(jnp.minimum(index, rows - 1), active)
        return out.at[index].set(values, mode="drop")

    return lax.fori_loop(0, (count + size - 1) // size, chunk, default)
