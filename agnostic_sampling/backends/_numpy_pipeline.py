"""The NumPy pipeline's kept sets (private to the NumPy backend): rows, thresholds, tempering.

How it avoids sorting the vocabulary
------------------------------------
Every truncation step keeps an *upper set* of the row (all tokens whose tempered logit is at
least some threshold), so a row's kept set is ``{i : z_i >= cut}`` for one ``cut`` per row. The
pipeline finds ``cut`` from a short list of candidates, the row's largest logits, and proves that
the list was long enough: one pass takes the maximum of each block of ``BLOCK`` logits; the
blocks with the largest maxima are gathered; every token outside them is at most ``t``, the
smallest gathered block maximum, so the gathered tokens above ``t`` (the *valid* candidates) are
exactly the row's largest tokens. The steps run on those, sorted by value (a sort of a few
hundred numbers, not of the vocabulary). A row whose decision would need a token beyond them
(top-k with a k larger than the list, a nucleus that has not reached ``p``, a min-p threshold
below them) is retried with eight times as many blocks, and finally with the whole row: a row whose only
step is top-p is then cut from a sampled band (`_numpy_nucleus`), any other row is sorted.

How it avoids most exponentials
-------------------------------
An exponential costs several times a memory pass, so neither top-p nor temperature sampling
takes one over the whole vocabulary unless a row needs it. The tokens outside the candidates
have a total mass between ``sum(exp(m_b))`` and ``sum(n_b * exp(m_b))`` over their blocks
(``m_b`` a block's tempered maximum, ``n_b`` its size): free, but dozens of times loose. A
row that these bounds do not settle gets bounds within 6.2% from a few cheap passes over it
(`_outside_mass_fine`: the float32 bit pattern of ``2**n (1 + f)`` for ``exp(z)``), and only a
row that those do not settle either pays for the exponentials (`_outside_mass_exact`).

- Top-p needs the row's total mass: the nucleus is decided when it is the same at both ends of
  the bounds (the count of tokens whose preceding mass is below ``p * total``).
- Rows with no truncation step ("dense" rows: temperature only) draw from a two-part mixture:
  the head (the largest tokens of the ``DENSE_HEAD`` blocks with the largest maxima, mass
  ``H``) and the tail (every other token, mass ``R``). A first uniform ``u`` picks the head iff
  ``u * (H + R) < H``, which the bounds on ``R`` settle for most rows; a row they do not settle
  computes ``R`` exactly, and draws from the tail if ``u`` says so. A second uniform picks the
  token inside the chosen part by inverse CDF. Each token ``i`` is drawn with probability
  ``exp(z_i) / (H + R)``: exactly, whatever the variates.
- With a `Seed` key, every row draws as the JAX backend does instead: one uniform, inverse CDF
  over the kept set in token-id order (a dense row pays an exponential over its whole row), so
  that the same uniform picks the same token on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._numpy_mass import _outside_mass
from agnostic_sampling.backends._numpy_mass import _outside_mass_exact
from agnostic_sampling.backends._numpy_mass import _outside_mass_fine
from agnostic_sampling.backends._numpy_nucleus import wide_nucleus
from agnostic_sampling.backends._numpy_rows import BLOCK
from agnostic_sampling.backends._numpy_rows import _column_major
from agnostic_sampling.backends._numpy_rows import _compact
from agnostic_sampling.backends._numpy_rows import _take_rows
from agnostic_sampling.backends._numpy_rows import _tempered_into

MIN_CANDIDATES = 32  # first candidate count for rows whose kept-set size is unknown (top-p, min-p)
GROWTH = 8  # how much the candidate list grows when a row needs more
DENSE_HEAD = 16  # blocks in the head of a dense row's mixture draw
WIDE = 4096  # candidate lists wider than this are handled row by row, or by blocks


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
        def field(name: str, as_dtype: Any) -> np.ndarray:
            value = getattr(params, name)
            return _row_values(OFF[name] if value is None else value, batch_shape, as_dtype)

        temperature = field("temperature", dtype)
        # A positive temperature below the smallest normal float32 is greedy, as on JAX (whose
        # XLA flushes it to 0): the limit of T -> 0.
        temperature = np.where(temperature < np.finfo(np.float32).tiny, 0, temperature).astype(dtype)
        return cls(
            temperature=temperature,
            top_k=field("top_k", np.int64),
            top_p=field("top_p", np.float64),
            min_p=field("min_p", dtype),
            min_keep=field("min_keep", np.int64),
        )

    def take(self, rows: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


@dataclass
class _Candidates:
    """Kept sets of some rows: ``index[r, j]`` is kept iff ``logit[r, j] >= cut[r]`` (any order).

    A group of whole rows cut by `wide_nucleus` holds no copy of them (``index`` and ``logit``
    None): its candidates are every token in token order, at the tempered logits that
    `candidates` recomputes from ``x``, and ``block_weight`` lets a draw recompute one block.
    """

    rows: np.ndarray  # (R,) which rows of the batch
    index: np.ndarray | None  # (R, L) token ids
    logit: np.ndarray | None  # (R, L) their tempered logits (row maximum at 0), -inf for padding
    cut: np.ndarray  # (R,) the smallest kept tempered logit
    block_weight: np.ndarray | None = None  # (R, blocks) whole rows' kept weights by BLOCK, float64


@dataclass
class _Kept:
    """The pipeline's answer for a whole batch: which tokens each row keeps."""

    row_max: np.ndarray  # (N,)
    greedy: np.ndarray  # (N,) bool: the row keeps only its first argmax, ``first``
    first: np.ndarray  # (N,) the first argmax of greedy rows (0 elsewhere)
    dense: np.ndarray  # (N,) bool: the row keeps every finite token
    cut: np.ndarray  # (N,) keep the tokens whose tempered logit is >= cut (-inf: all finite)
    block_max: np.ndarray | None  # (N, blocks), None when every row is greedy
    groups: list[_Candidates]


def _block_maxima(x: np.ndarray) -> np.ndarray:
    """Maximum of each block of ``BLOCK`` consecutive logits, the last block possibly shorter.

    ``maximum.reduceat`` runs one long loop per row; a reshape to (rows, blocks, BLOCK) and a
    ``max`` over the last axis would pay a loop set-up per block (measured: 2.5x slower).
    """
    if not _column_major(x):
        return np.maximum.reduceat(x, np.arange(0, x.shape[1], BLOCK), axis=1)
    # Column-major: reduce (blocks, BLOCK, rows) over its middle axis, every read contiguous
    # (``reduceat`` along the first axis of the transpose is 20x slower). With few rows, each
    # step of that reduction is short: ``group`` consecutive tokens' rows are reduced as one run
    # of ``group * rows`` values, then the groups (measured at 64 and 16 rows of 128256: 1.8x and 4x faster).
    n_rows = x.shape[0]
    columns, full = x.T, x.shape[1] // BLOCK
    group = 1 << min(4, max(0, (BLOCK // n_rows).bit_length() - 1))  # min(16, BLOCK // rows), a power of 2
    out = np.empty(((x.shape[1] + BLOCK - 1) // BLOCK, n_rows), x.dtype)
    if full:
        runs = np.max(columns[: full * BLOCK].reshape(full, BLOCK // group, group * n_rows), axis=1)
        np.max(runs.reshape(full, group, n_rows), axis=1, out=out[:full])
    if x.shape[1] % BLOCK:
        np.max(columns[full * BLOCK :], axis=0, out=out[full])
    return np.ascontiguousarray(out.T)


def _first_of_max(x: np.ndarray, rows: np.ndarray, block_max: np.ndarray) -> np.ndarray:
    """The first argmax of ``rows``: the first block holding the row's maximum, then inside it.

    For column-major ``x``, whose ``argmax`` along a row reads a cache line per logit.
    """
    block = block_max.argmax(axis=-1)
    value = _gather(x, rows, block[:, None])
    return block * BLOCK + value.argmax(axis=-1)


def first_argmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first argmax of every row of ``x`` (N, V) and its value (NaN counts as the maximum).

    One pass; for column-major ``x`` through its block maxima and the block that holds each
    row's maximum (`_first_of_max`), reading the columns where they lie.
    """
    if _column_major(x):
        block_max = _block_maxima(x)
        return _first_of_max(x, np.arange(x.shape[0]), block_max), block_max.max(axis=-1)
    first = x.argmax(axis=-1).astype(np.int64, copy=False)
    return first, np.take_along_axis(x, first[:, None], -1)[:, 0]


def _choose_blocks(block_max: np.ndarray, n_blocks: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The ``n_blocks`` blocks of each row with the largest maxima, and the smallest of those.

    Every token outside the chosen blocks is ``<=`` the returned threshold. Returns
    ``(None, -inf)`` when the whole row is to be taken.
    """
    total = block_max.shape[1]
    if _whole_rows(total, n_blocks):  # gathering most blocks costs more than the whole row
        return None, np.full(block_max.shape[0], -np.inf, block_max.dtype)
    blocks = np.argpartition(block_max, total - n_blocks, axis=-1)[:, total - n_blocks :]
    return blocks, np.take_along_axis(block_max, blocks, -1).min(axis=-1)


def _gather(x: np.ndarray, rows: np.ndarray, blocks: np.ndarray | None) -> np.ndarray:
    """The logits of the chosen blocks of ``rows``, block after block (the whole rows for None).

    Positions past the end of the vocabulary (in a short last block) get the logit ``-inf``.
    """
    vocab = x.shape[1]
    if blocks is None:
        return _take_rows(x, rows)
    if _column_major(x):
        return _gather_columns(x, rows, blocks)
    if vocab % BLOCK == 0:  # copy whole blocks rather than single tokens
        return x.reshape(x.shape[0], -1, BLOCK)[rows[:, None], blocks].reshape(rows.size, -1)
    index = (blocks[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(rows.size, -1)
    past_end = index >= vocab
    np.minimum(index, vocab - 1, out=index)
    value = x[rows[:, None], index]
    value[past_end] = -np.inf
    return value


def _gather_columns(x: np.ndarray, rows: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """`_gather` for column-major ``x``: the (row, block) pairs are copied in block order.

    In that layout a cache line holds one token of 16 neighbouring rows, so a block of one row
    reads ``BLOCK`` lines; taken block after block, the rows that chose the same block reuse
    them (measured: 23 -> 15 ms for 51 blocks of each of 256 rows of 128256 tokens).
    """
    n_rows, vocab = x.shape
    full = vocab // BLOCK
    block = blocks.reshape(-1)
    row = np.repeat(rows, blocks.shape[1])
    order = np.argsort(block * n_rows + row, kind="stable")
    block, row = block[order], row[order]
    out = np.empty((order.size, BLOCK), x.dtype)
    inside = block < full  # the short last block (if any) sorts last
    columns = x[:, : full * BLOCK].T.reshape(full, BLOCK, n_rows)  # a view: (blocks, BLOCK, rows)
    out[order[inside]] = columns[block[inside], :, row[inside]]
    if not inside.all():
        last = np.full((int((~inside).sum()), BLOCK), -np.inf, x.dtype)
        last[:, : vocab - full * BLOCK] = x[row[~inside], full * BLOCK :]
        out[order[~inside]] = last
    return out.reshape(rows.size, -1)


def _token_ids(vocab: int) -> np.ndarray:
    """``arange(vocab)``, the ids of a whole row's candidates: int32 (half the memory) when it fits."""
    return np.arange(vocab, dtype=np.int32 if vocab < 2**31 else np.int64)


def _count_at_least(values: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (decreasing along the row), how many are ``>= bound``.

    Wide rows use a binary search per row instead of a comparison of every entry.
    """
    if values.shape[1] <= WIDE:
        return (values >= bound[:, None]).sum(axis=-1)
    width = values.shape[1]
    return np.array([width - np.searchsorted(row[::-1], b, side="left")
                     for row, b in zip(values, bound, strict=True)])


def _count_mass_before(weight: np.ndarray, block_after: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per row, how many positions have less than ``bound`` of ``weight`` before them.

    ``block_after`` holds the cumulative sums of ``weight`` at the end of each block of ``BLOCK``:
    a binary search finds the block where the mass reaches ``bound``, and only that block's
    cumulative sum is computed.
    """
    counts = np.zeros(bound.size, np.int64)
    for row in np.flatnonzero(bound > 0):
        block = int(np.searchsorted(block_after[row], bound[row], side="left"))
        if block == block_after.shape[1]:
            counts[row] = weight.shape[1]
            continue
        start = block * BLOCK
        mass = (block_after[row, block - 1] if block else 0.0) + np.cumsum(
            weight[row, start : start + BLOCK], dtype=np.float64)
        counts[row] = start + 1 + np.searchsorted(mass[:-1], bound[row], side="left")
    return counts


def _keep_top(z: np.ndarray, received: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Size of the upper set holding the ``j`` largest of the first ``received`` (ties kept)."""
    j = np.minimum(j, received)
    last = np.clip(j - 1, 0, z.shape[1] - 1)  # rows needing more than z holds are retried anyway
    value = np.take_along_axis(z, last[:, None], -1)[:, 0]
    return np.where(j >= received, received, _count_at_least(z, value))


def _truncate(z: np.ndarray, valid: np.ndarray, complete: np.ndarray, prm: _Rows,  # noqa: C901
              total: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the truncation steps on sorted candidate logits.

    ``z`` (R, L): tempered logits sorted decreasingly, ``-inf`` past each row's ``valid`` prefix.
    Rows with ``complete`` hold their whole row; the others only know their valid prefix.
    ``total`` bounds (low, high) the row's softmax denominator over all finite tokens (needed by
    top-p when no earlier step has shrunk the set), or is None when no row needs it.

    Returns ``(count, exhausted, ambiguous)``: how many leading candidates are kept; which rows
    needed a token past their valid prefix (retry them with more candidates); and which rows'
    nucleus differs between the two ends of ``total`` (retry them with the exact total). The
    count of a row that is exhausted or ambiguous is meaningless.
    """
    n_rows, width = z.shape
    unknown = np.iinfo(np.int64).max  # the received set is "every finite token", size not known
    received = np.where(complete, valid, unknown)
    exhausted = np.zeros(n_rows, bool)
    ambiguous = np.zeros(n_rows, bool)
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
        limit = np.minimum(received, valid)
        if width > WIDE:  # whole rows: float32 terms, float64 sums by blocks
            weight = np.exp(z)
            for row, end in enumerate(limit):
                weight[row, end:] = 0.0
            block_after = np.cumsum(np.add.reduceat(weight, np.arange(0, width, BLOCK), axis=1,
                                                    dtype=np.float64), axis=1)
            inside = block_after[:, -1]

            def before(bound: np.ndarray) -> np.ndarray:
                return _count_mass_before(weight, block_after, bound)
        else:
            weight = np.exp(z.astype(np.float64))
            weight[position >= limit[:, None]] = 0.0
            mass_after = np.cumsum(weight, axis=-1)  # never decreases along a row
            inside = mass_after[:, -1]

            def before(bound: np.ndarray) -> np.ndarray:
                # the mass before position j is mass_after[j - 1] (0 before the first)
                return np.where(bound > 0, (mass_after[:, :-1] < bound[:, None]).sum(axis=-1) + 1, 0)

        def reached(mass: np.ndarray) -> np.ndarray:
            return np.minimum(before(prm.top_p * mass), limit)

        if total is None or known.all():
            reached_low = reached_high = reached(inside)
        else:
            reached_low = reached(np.where(known, inside, total[0]))
            reached_high = reached(np.where(known, inside, total[1]))
        exhausted |= active & (reached_low >= valid) & (received > valid)
        ambiguous |= active & ~exhausted & (reached_low != reached_high)
        count = _keep_top(z, received, np.maximum(reached_high, 1))
        received = np.where(active, at_least_min_keep(count, received), received)

    # Min-p: keep i iff z_i >= max z + log(min_p); max z is 0 after the shift.
    active = prm.min_p > 0
    if active.any():
        with np.errstate(divide="ignore"):
            floor = np.log(prm.min_p).astype(z.dtype)
        count = np.minimum((z >= floor[:, None]).sum(axis=-1), received)
        exhausted |= active & (count >= valid) & (received > valid)
        received = np.where(active, at_least_min_keep(count, received), received)

    return np.where(exhausted | ambiguous, 0, received), exhausted, ambiguous & ~exhausted


def _first_blocks(block_max: np.ndarray, row_max: np.ndarray, prm: _Rows) -> int:
    """How many blocks to gather first: enough for each row's top-k, min-p and min_keep.

    A top-k row needs ``k`` tokens; a min-p row every block whose maximum reaches its threshold;
    a nucleus row starts from ``MIN_CANDIDATES``. One block more than the tokens needed makes the
    smallest gathered maximum fall below them.
    """
    with np.errstate(divide="ignore"):
        min_p_floor = row_max + prm.temperature * np.log(prm.min_p).astype(row_max.dtype)
    min_p_blocks = (block_max >= min_p_floor[:, None]).sum(axis=-1)
    tokens = np.where(prm.top_k > 0, prm.top_k,
                      np.where(prm.min_p > 0, min_p_blocks, MIN_CANDIDATES))
    return int(np.maximum(tokens, prm.min_keep).max()) + 1


@dataclass
class _Head:
    """The largest tokens of some rows, proven complete by the block maxima (module docstring)."""

    index: np.ndarray  # (R, W) token ids, in no particular order
    logit: np.ndarray  # (R, W) their tempered logits; -inf for padding
    valid: np.ndarray  # (R,) how many finite entries: every token of the row above the threshold
    complete: np.ndarray  # (R,) bool: the head is the whole row
    low: np.ndarray  # (R,) lower bound on the mass sum(exp(z)) of the tokens not in the head
    high: np.ndarray  # (R,) upper bound on the same


def _head(x: np.ndarray, rows: np.ndarray, block_max: np.ndarray, row_max: np.ndarray,
          temperature: np.ndarray, n_blocks: int, bounds: bool) -> _Head:
    """The tokens of ``rows`` above the smallest of their ``n_blocks`` largest block maxima.

    With ``bounds``, also bound the mass of the rest of each row (else the bounds are NaN).
    """
    blocks, threshold = _choose_blocks(block_max, n_blocks)
    gathered = _gather(x, rows, blocks)
    above = gathered > threshold[:, None]
    if blocks is None:
        index, value = np.broadcast_to(_token_ids(x.shape[1]), gathered.shape), gathered
    else:  # only tokens above the threshold are certainly the row's largest: drop the rest first
        column, value = _compact(above, gathered)
        index = np.take_along_axis(blocks, column // BLOCK, -1) * BLOCK + column % BLOCK
    logit = (value - row_max[:, None]) / temperature[:, None]
    z_threshold = (threshold - row_max) / temperature
    if blocks is not None:  # rounding can merge a token with the threshold
        logit[logit <= z_threshold[:, None]] = -np.inf
    valid = np.isfinite(logit).sum(axis=-1)
    if blocks is None:
        low = high = np.zeros(rows.size)
    elif not bounds:
        low = high = np.full(rows.size, np.nan)
    else:
        low, high = _outside_mass(block_max, blocks, row_max, temperature, x.shape[1])
        # The gathered tokens below the threshold, bounded like a block each by their maximum.
        below = np.where(above, -np.inf, gathered).reshape(rows.size, blocks.shape[1], BLOCK)
        below_max = (below.max(axis=-1) - row_max[:, None]) / temperature[:, None]
        merged = above.sum(axis=-1) - valid  # tokens that rounding merged with the threshold
        high = high + (BLOCK * np.exp(below_max.astype(np.float64)).sum(axis=-1)
                       + merged * np.exp(z_threshold.astype(np.float64))) * (1 + 1e-9)
    return _Head(index, logit, valid, threshold == -np.inf, low, high)


def _truncate_rows(x: np.ndarray, rows: np.ndarray, prm: _Rows, block_max: np.ndarray, row_max: np.ndarray,
                   n_blocks: int) -> tuple[_Candidates, np.ndarray]:
    """One attempt at the kept sets of ``rows`` from their ``n_blocks`` largest blocks.

    Returns the kept sets of the rows that succeeded, and a mask of the rows that need more.
    """
    head = _head(x, rows, block_max, row_max, prm.temperature, n_blocks,
                 bounds=bool(np.any((prm.top_p < 1) & (prm.top_k == 0))))
    ordered = np.sort(head.logit, axis=-1)[:, ::-1]
    valid, complete = head.valid, head.complete
    total = inside = None
    if np.any((prm.top_p < 1) & ~complete):
        inside = np.exp(ordered.astype(np.float64)).sum(axis=-1)
        total = (inside + head.low, inside + head.high)
    count, exhausted, ambiguous = _truncate(ordered, valid, complete, prm, total)
    for outside_mass in (_outside_mass_fine, _outside_mass_exact):
        if not ambiguous.any():
            break
        # The block bounds did not settle the nucleus: tighter bounds, then the exact mass.
        redo = np.flatnonzero(ambiguous)
        bounds = outside_mass(x, rows[redo], row_max[redo], prm.temperature[redo], head.index[redo],
                              head.logit[redo])
        low, high = bounds if isinstance(bounds, tuple) else (bounds, bounds)
        total = (inside[redo] + low, inside[redo] + high)
        count[redo], exhausted[redo], ambiguous[redo] = _truncate(ordered[redo], valid[redo], complete[redo],
                                                                  prm.take(redo), total)
    done = np.flatnonzero(~exhausted)
    cut = ordered[done, count[done] - 1]
    return _Candidates(rows[done], head.index[done], head.logit[done], cut), exhausted


def candidates(x: np.ndarray, group: _Candidates, row_max: np.ndarray,
               temperature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A group's ``(index, logit)``; for a group of whole rows, recomputed from ``x`` (N, V).

    ``row_max`` and ``temperature`` are the batch's (N,).
    """
    if group.index is not None:
        return group.index, group.logit
    rows = group.rows
    z = _tempered_into(np.empty((rows.size, x.shape[1]), x.dtype), x, rows, row_max[rows], temperature[rows])
    return np.broadcast_to(_token_ids(x.shape[1]), z.shape), z


def _whole_rows(total: int, n_blocks: int) -> bool:
    """Whether an attempt with ``n_blocks`` of ``total`` blocks takes whole rows (`_choose_blocks`)."""
    return 2 * n_blocks >= total or total <= 4


def _wide_nuclei(x: np.ndarray, pending: np.ndarray, prm: _Rows, row_max: np.ndarray,
                 groups: list[_Candidates]) -> np.ndarray:
    """Cut the pending rows whose only step is top-p by `wide_nucleus`; the rows left to sort.

    Appends the group of rows it decided to ``groups``.
    """
    if x.shape[1] <= WIDE:
        return pending
    only_top_p = ((prm.top_p[pending] < 1) & (prm.top_k[pending] == 0) & (prm.min_p[pending] == 0)
                  & (prm.min_keep[pending] == 1))
    wide = pending[only_top_p]
    if not wide.size:
        return pending
    cut, found, block_weight = wide_nucleus(x, wide, row_max[wide], prm.temperature[wide], prm.top_p[wide],
                                            BLOCK)
    if found.any():
        groups.append(_Candidates(wide[found], None, None, cut[found], block_weight[found]))
    return np.concatenate([pending[~only_top_p], wide[~found]])


def _pipeline(x: np.ndarray, prm: _Rows) -> tuple[_Kept | None, np.ndarray]:
    """Decide every row's kept set. ``x`` is (N, V) in compute precision."""
    n_rows = x.shape[0]
    greedy = prm.temperature == 0
    block_max = None if greedy.all() and not _column_major(x) else _block_maxima(x)
    if block_max is None:  # every row greedy: one pass, as `greedy` (NaN and +inf are argmaxes)
        first, row_max = first_argmax(x)
    else:
        first = np.zeros(n_rows, np.int64)
        row_max = block_max.max(axis=-1)
    status = _status(row_max)
    if status.any():
        return None, status

    greedy_rows = np.flatnonzero(greedy) if block_max is not None else np.zeros(0, np.int64)
    if greedy_rows.size and _column_major(x):
        first[greedy_rows] = _first_of_max(x, greedy_rows, block_max[greedy_rows])
    elif greedy_rows.size:
        first[greedy_rows] = x[greedy_rows].argmax(axis=-1)

    truncating = ~greedy & ((prm.top_k > 0) | (prm.top_p < 1) | (prm.min_p > 0))
    cut = np.full(n_rows, -np.inf, x.dtype)
    groups = []
    pending = np.flatnonzero(truncating)
    if pending.size:
        n_blocks = _first_blocks(block_max[pending], row_max[pending], prm.take(pending))
        while pending.size:
            if _whole_rows(block_max.shape[1], n_blocks):
                pending = _wide_nuclei(x, pending, prm, row_max, groups)
                if not pending.size:
                    break
            group, exhausted = _truncate_rows(x, pending, prm.take(pending), block_max[pending],
                                              row_max[pending], n_blocks)
            groups.append(group)
            pending = pending[exhausted]
            n_blocks *= GROWTH
    for group in groups:
        cut[group.rows] = group.cut
    dense = ~greedy & ~truncating
    return _Kept(row_max, greedy, first, dense, cut, block_max, groups), status


def _refined(z: np.ndarray, params: SamplingParams, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Processed rows ``(N, V)`` after the steps of `_strategies` (typical-p ... XTC)."""
    min_keep_on = params.min_keep is not None and bool(np.any(np.asarray(params.min_keep) != 1))
    strategy = _strategies.rows(params, batch_shape, z.dtype, np, min_keep_on)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _strategies.refine(z, strategy, _strategies.NUMPY_SEARCHES, np).astype(z.dtype, copy=False)
