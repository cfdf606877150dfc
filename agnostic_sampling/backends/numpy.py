"""The sampling pipeline for NumPy arrays.

How it avoids sorting the vocabulary
------------------------------------
Every truncation step keeps an *upper set* of the row (all tokens whose tempered logit is at
least some threshold), so the final kept set is an upper set too. The pipeline therefore works on
a short, sorted list of candidates, the row's largest logits, and proves that the list was long
enough: one pass takes the maximum of each block of ``BLOCK`` logits; the blocks with the largest
maxima are gathered; every token outside them is at most ``t``, the smallest gathered block
maximum, so the gathered tokens above ``t`` are exactly the row's largest tokens in order. The
steps run on that *valid prefix*; a row whose decision would need a token beyond it (top-k with
a k larger than the prefix, a nucleus that has not reached ``p``, a min-p threshold below it) is
retried with eight times as many blocks, and finally with the whole row sorted.

Rows with no truncation step ("dense" rows: temperature only) never sort: they draw by inverse
CDF over block sums, then within one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agnostic_sampling._api import ROW_NAN, ROW_NO_FINITE, ROW_OK, ROW_POSINF
from agnostic_sampling._params import SamplingParams

BLOCK = 256  # logits per block of the block-maximum pass
MIN_CANDIDATES = 32  # first candidate count for rows whose kept-set size is unknown (top-p, min-p)
GROWTH = 8  # how much the candidate list grows when a row needs more

# --------------------------------------------------------------------------------------------
# Conversions at the boundary


def asarray(logits: Any) -> np.ndarray:
    """The logits as a NumPy array (no copy when they already are one)."""
    return np.asarray(logits)


def as_key(key: Any) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a SeedSequence."""
    if isinstance(key, np.random.Generator):
        return key
    if isinstance(key, np.random.SeedSequence) or (
        isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))
    ):
        return np.random.default_rng(key)
    raise TypeError(
        "key must be a numpy.random.Generator, an int seed or a numpy.random.SeedSequence, "
        f"got {type(key).__name__}"
    )


def _rows(logits: np.ndarray) -> np.ndarray:
    """The logits as a 2-D (rows, V) array in compute precision (float32, or float64)."""
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    return logits.reshape(-1, logits.shape[-1]).astype(dtype, copy=False)


def _row_values(value: Any, batch_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=dtype), batch_shape).reshape(-1)


def _status(row_max: np.ndarray) -> np.ndarray:
    """Per-row status from the row maximum, which NaN and +inf both propagate to."""
    status = np.full(row_max.shape, ROW_OK, np.int8)
    status[row_max == -np.inf] = ROW_NO_FINITE
    status[row_max == np.inf] = ROW_POSINF
    status[np.isnan(row_max)] = ROW_NAN
    return status


# --------------------------------------------------------------------------------------------
# Kept sets


@dataclass
class _Rows:
    """Parameters of the rows being processed, one entry per row, in compute precision."""

    temperature: np.ndarray
    top_k: np.ndarray  # 0: step off
    top_p: np.ndarray  # 1: step off
    min_p: np.ndarray  # 0: step off
    min_keep: np.ndarray

    @classmethod
    def from_params(cls, params: SamplingParams, batch_shape: tuple[int, ...], dtype: Any) -> _Rows:
        def field(name: str, off: float, as_dtype: Any) -> np.ndarray:
            value = getattr(params, name)
            return _row_values(off if value is None else value, batch_shape, as_dtype)

        return cls(
            temperature=field("temperature", 1.0, dtype),
            top_k=field("top_k", 0, np.int64),
            top_p=field("top_p", 1.0, np.float64),
            min_p=field("min_p", 0.0, dtype),
            min_keep=field("min_keep", 1, np.int64),
        )

    def take(self, rows: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


@dataclass
class _Candidates:
    """Kept sets of some rows as sorted candidate lists: ``index[r, :count[r]]`` are kept."""

    rows: np.ndarray  # (R,) which rows of the batch
    index: np.ndarray  # (R, L) token ids, by decreasing logit
    logit: np.ndarray  # (R, L) tempered logits (row maximum at 0), -inf past the valid prefix
    count: np.ndarray  # (R,) how many leading candidates are kept


@dataclass
class _Kept:
    """The pipeline's answer for a whole batch: which tokens each row keeps."""

    row_max: np.ndarray  # (N,)
    dense: np.ndarray  # (N,) bool: the row keeps every finite token
    groups: list[_Candidates]


def _block_maxima(x: np.ndarray) -> np.ndarray:
    """Maximum of each block of ``BLOCK`` consecutive logits, the last block possibly shorter."""
    n_rows, vocab = x.shape
    full = vocab // BLOCK
    parts = []
    if full:
        parts.append(x[:, : full * BLOCK].reshape(n_rows, full, BLOCK).max(axis=-1))
    if vocab % BLOCK:
        parts.append(x[:, full * BLOCK :].max(axis=-1, keepdims=True))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _gather_candidates(x: np.ndarray, block_max: np.ndarray, n_blocks: int) -> tuple[np.ndarray, ...]:
    """The largest logits of each row, sorted, with the length of the prefix that is exact.

    Returns ``(index, value, threshold)``: the ``n_blocks`` blocks with the largest maxima are
    gathered; every token outside them is ``<= threshold``, so the gathered tokens above
    ``threshold`` are the row's largest, in order. ``threshold`` is ``-inf`` when the whole row
    was gathered.
    """
    n_rows, vocab = x.shape
    total_blocks = block_max.shape[1]
    if n_blocks >= total_blocks or total_blocks * BLOCK <= 4 * BLOCK:
        index = np.argsort(-x, axis=-1, kind="stable")
        return index, np.take_along_axis(x, index, -1), np.full(n_rows, -np.inf, x.dtype)

    chosen = np.argpartition(block_max, total_blocks - n_blocks, axis=-1)[:, total_blocks - n_blocks :]
    threshold = np.take_along_axis(block_max, chosen, -1).min(axis=-1)
    index = (chosen[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(n_rows, -1)
    outside = index >= vocab
    index[outside] = vocab - 1
    value = np.take_along_axis(x, index, -1)
    value[outside] = -np.inf

    # Only tokens above the threshold can be exact; sort just those.
    above = value > threshold[:, None]
    width = max(int(above.sum(axis=-1).max()), 1)
    if width < value.shape[1]:
        top = np.argpartition(-value, width - 1, axis=-1)[:, :width]
        index, value = np.take_along_axis(index, top, -1), np.take_along_axis(value, top, -1)
    order = np.argsort(-value, axis=-1, kind="stable")
    return np.take_along_axis(index, order, -1), np.take_along_axis(value, order, -1), threshold


def _keep_top(z: np.ndarray, received: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Size of the upper set holding the ``j`` largest of the first ``received`` (ties kept)."""
    j = np.minimum(j, received)
    last = np.clip(j - 1, 0, z.shape[1] - 1)  # rows needing more than z holds are retried anyway
    value = np.take_along_axis(z, last[:, None], -1)
    return np.where(j >= received, received, (z >= value).sum(axis=-1))


def _truncate(z: np.ndarray, valid: np.ndarray, complete: np.ndarray, prm: _Rows,
              normaliser: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Run the truncation steps on sorted candidate logits.

    ``z`` (R, L): tempered logits sorted decreasingly, ``-inf`` past each row's ``valid`` prefix.
    Rows with ``complete`` hold their whole row; the others only know their valid prefix.
    ``normaliser`` is the row's softmax denominator over all finite tokens (needed by top-p
    when no earlier step has shrunk the set), or None when no row needs it.

    Returns ``(count, exhausted)``: how many leading candidates are kept, and which rows needed
    a token past their valid prefix (their ``count`` is meaningless; retry them with more).
    """
    n_rows, width = z.shape
    unknown = np.iinfo(np.int64).max  # the received set is "every finite token", size not known
    received = np.where(complete, valid, unknown)
    exhausted = np.zeros(n_rows, bool)
    position = np.arange(width)

    def at_least_min_keep(count: np.ndarray, before: np.ndarray) -> np.ndarray:
        nonlocal exhausted
        exhausted |= (prm.min_keep > valid) & (prm.min_keep < before)
        return np.maximum(count, _keep_top(z, before, prm.min_keep))

    # Top-k.
    active = prm.top_k > 0
    if active.any():
        exhausted |= active & (prm.top_k > valid) & (prm.top_k < received)
        count = _keep_top(z, received, prm.top_k)
        received = np.where(active, at_least_min_keep(count, received), received)

    # Top-p: keep i iff the mass strictly more probable than i is below p.
    active = prm.top_p < 1
    if active.any():
        known = received <= width
        weight = np.exp(z.astype(np.float64))
        in_set = position < np.minimum(received, valid)[:, None]
        weight[~in_set] = 0.0
        mass_before = np.cumsum(weight, axis=-1) - weight
        if normaliser is None:
            total = weight.sum(axis=-1)
        else:
            total = np.where(known, weight.sum(axis=-1), normaliser)
        below = (mass_before < (prm.top_p * total)[:, None]) & in_set
        reached = below.sum(axis=-1)
        exhausted |= active & (reached >= valid) & (received > valid)
        count = _keep_top(z, received, np.maximum(reached, 1))
        received = np.where(active, at_least_min_keep(count, received), received)

    # Min-p: keep i iff z_i >= max z + log(min_p); max z is 0 after the shift.
    active = prm.min_p > 0
    if active.any():
        with np.errstate(divide="ignore"):
            floor = np.log(prm.min_p).astype(z.dtype)
        count = np.minimum((z >= floor[:, None]).sum(axis=-1), received)
        exhausted |= active & (count >= valid) & (received > valid)
        received = np.where(active, at_least_min_keep(count, received), received)

    return np.where(exhausted, 0, received), exhausted


def _pipeline(x: np.ndarray, prm: _Rows) -> tuple[_Kept | None, np.ndarray]:
    """Decide every row's kept set. ``x`` is (N, V) in compute precision."""
    greedy = prm.temperature == 0
    truncating = ~greedy & ((prm.top_k > 0) | (prm.top_p < 1) | (prm.min_p > 0))
    block_max = _block_maxima(x) if truncating.any() else None
    row_max = x.max(axis=-1) if block_max is None else block_max.max(axis=-1)
    status = _status(row_max)
    if status.any():
        return None, status

    groups = []
    greedy_rows = np.flatnonzero(greedy)
    if greedy_rows.size:
        first = x[greedy_rows].argmax(axis=-1)
        groups.append(_Candidates(greedy_rows, first[:, None], np.zeros((greedy_rows.size, 1), x.dtype),
                                  np.ones(greedy_rows.size, np.int64)))

    pending = np.flatnonzero(truncating)
    if pending.size:
        needed = np.maximum(np.maximum(prm.top_k, prm.min_keep)[pending].max(), MIN_CANDIDATES)
        n_blocks = int(needed) + 1
        normaliser = None
        while pending.size:
            rows_x = x[pending] if pending.size < x.shape[0] else x
            sub = prm.take(pending)
            if normaliser is None and np.any((sub.top_p < 1) & (sub.top_k == 0)):
                normaliser = _softmax_denominators(x, row_max, prm.temperature)
            index, value, threshold = _gather_candidates(rows_x, block_max[pending], n_blocks)
            maximum = row_max[pending][:, None]
            temperature = sub.temperature[:, None]
            z = (value - maximum) / temperature
            z_threshold = (threshold[:, None] - maximum) / temperature
            valid = (z > z_threshold).sum(axis=-1)
            z[np.arange(z.shape[1]) >= valid[:, None]] = -np.inf
            complete = threshold == -np.inf
            count, exhausted = _truncate(z, valid, complete, sub,
                                         None if normaliser is None else normaliser[pending])
            done = ~exhausted
            width = max(int(count[done].max()), 1) if done.any() else 1
            groups.append(_Candidates(pending[done], index[done, :width], z[done, :width], count[done]))
            pending = pending[exhausted]
            n_blocks *= GROWTH

    dense = ~greedy & ~truncating
    return _Kept(row_max, dense, groups), status


def _softmax_denominators(x: np.ndarray, row_max: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """Sum of exp of the tempered logits of every row, accumulated pairwise (float64 result)."""
    e = _tempered(x, row_max, temperature)
    np.exp(e, out=e)
    return e.sum(axis=-1).astype(np.float64)


def _tempered(x: np.ndarray, row_max: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """``(x - max) / T`` per row, in a new array; rows with ``T == 0`` give 0 at the max."""
    safe = np.where(temperature == 0, 1, temperature).astype(x.dtype)
    out = np.subtract(x, row_max[:, None])
    out /= safe[:, None]
    return out


# --------------------------------------------------------------------------------------------
# The public operations


def greedy(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each row's maximum, and the row status."""
    x = _rows(logits)
    ids = x.argmax(axis=-1)  # NaN counts as the maximum, so a NaN row shows in `best`
    best = np.take_along_axis(x, ids[:, None], -1)[:, 0]
    return ids.astype(np.int64).reshape(logits.shape[:-1]), _status(best).reshape(logits.shape[:-1])


def process_logits(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """Tempered logits, ``-inf`` outside each row's kept set."""
    x = _rows(logits)
    batch_shape = logits.shape[:-1]
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    out = np.full(x.shape, -np.inf, x.dtype)
    dense = np.flatnonzero(kept.dense)
    if dense.size:
        out[dense] = _tempered(x[dense], kept.row_max[dense], prm.temperature[dense])
    for group in kept.groups:
        keep = np.arange(group.index.shape[1]) < group.count[:, None]
        rows = np.broadcast_to(group.rows[:, None], keep.shape)
        out[rows[keep], group.index[keep]] = group.logit[keep]
    return out.reshape(logits.shape), status.reshape(batch_shape)


def probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """``softmax(process_logits(...))``: float32, or float64 for float64 input."""
    z, status = process_logits(logits, params)
    if z is None:
        return None, status
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e, status


def sample(rng: np.random.Generator, logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """One exact draw per row from the kept set, by inverse CDF on one uniform per row."""
    x = _rows(logits)
    batch_shape = logits.shape[:-1]
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    uniform = rng.random(x.shape[0])
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    ids = np.empty(x.shape[0], np.int64)
    dense = np.flatnonzero(kept.dense)
    if dense.size:
        rows_x = x[dense] if dense.size < x.shape[0] else x
        ids[dense] = _draw_dense(rows_x, kept.row_max[dense], prm.temperature[dense], uniform[dense])
    for group in kept.groups:
        ids[group.rows] = _draw_candidates(group, uniform[group.rows])
    return ids.reshape(batch_shape), status.reshape(batch_shape)


def _pick(cumulative: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """First position whose cumulative weight exceeds ``target``, never a zero-weight position.

    A position of zero weight never exceeds a target that its predecessor did not; only rounding
    can push the target past the end, and then the last position of positive weight is taken.
    """
    position = (cumulative <= target[:, None]).sum(axis=-1)
    last_positive = weight.shape[1] - 1 - np.argmax(weight[:, ::-1] > 0, axis=-1)
    return np.minimum(position, last_positive)


def _draw_candidates(group: _Candidates, uniform: np.ndarray) -> np.ndarray:
    keep = np.arange(group.index.shape[1]) < group.count[:, None]
    weight = np.where(keep, np.exp(group.logit.astype(np.float64)), 0.0)
    cumulative = np.cumsum(weight, axis=-1)
    position = _pick(cumulative, uniform * cumulative[:, -1], weight)
    return np.take_along_axis(group.index, position[:, None], -1)[:, 0]


def _draw_dense(x: np.ndarray, row_max: np.ndarray, temperature: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse CDF over the whole row without a row-long cumulative sum: block, then token."""
    n_rows, vocab = x.shape
    e = _tempered(x, row_max, temperature)
    np.exp(e, out=e)
    full = vocab // BLOCK
    sums = [e[:, : full * BLOCK].reshape(n_rows, full, BLOCK).sum(axis=-1)] if full else []
    if vocab % BLOCK:
        sums.append(e[:, full * BLOCK :].sum(axis=-1, keepdims=True))
    block_weight = np.concatenate(sums, axis=1).astype(np.float64)
    block_cumulative = np.cumsum(block_weight, axis=-1)
    target = uniform * block_cumulative[:, -1]
    block = _pick(block_cumulative, target, block_weight)
    before = np.where(block > 0, np.take_along_axis(block_cumulative, np.maximum(block - 1, 0)[:, None], -1)[:, 0], 0.0)

    index = block[:, None] * BLOCK + np.arange(BLOCK)
    inside = index < vocab
    weight = np.where(inside, np.take_along_axis(e, np.minimum(index, vocab - 1), -1), 0).astype(np.float64)
    position = _pick(np.cumsum(weight, axis=-1), target - before, weight)
    return block * BLOCK + position
