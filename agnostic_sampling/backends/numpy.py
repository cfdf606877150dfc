"""The sampling pipeline for NumPy arrays.

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
below them) is retried with eight times as many blocks, and finally with the whole row.

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
from typing import NamedTuple

import numpy as np

from agnostic_sampling._chain import Chain
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import is_seed
from agnostic_sampling._seed import to_words
from agnostic_sampling._seed import uniforms
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF
from agnostic_sampling.backends import _acceptance
from agnostic_sampling.backends import _chain
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends import _strategies

BLOCK = 256  # logits per block of the block-maximum pass
MIN_CANDIDATES = 32  # first candidate count for rows whose kept-set size is unknown (top-p, min-p)
GROWTH = 8  # how much the candidate list grows when a row needs more
DENSE_HEAD = 16  # blocks in the head of a dense row's mixture draw
CHUNK = 2**17  # logits per chunk of the row-wise passes that must stay in cache
WIDE = 4096  # candidate lists wider than this are handled row by row, or by blocks
TILE = 256  # rows and columns of the tiles that copy strided rows to C order

# --------------------------------------------------------------------------------------------
# Conversions at the boundary


def asarray(logits: Any) -> np.ndarray:
    """The logits as a NumPy array (no copy when they already are one)."""
    try:
        return np.asarray(logits)
    except ValueError as error:  # NumPy refuses ragged nested sequences
        raise ValueError(f"logits must be a rectangular array of shape (..., V); got a ragged "
                         f"{type(logits).__name__} ({error})") from None


def as_key(key: Any) -> np.random.Generator | SeedWords:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a SeedSequence.

    A `Seed` gives its checked words. Any non-negative int is a seed, however large (as for
    ``numpy.random.default_rng``).
    """
    if isinstance(key, np.random.Generator):
        return key
    if is_seed(key):
        return to_words(key, np)
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) and key < 0:
        raise ValueError(f"key must be a non-negative int seed, a numpy.random.Generator, a "
                         f"SeedSequence or a Seed, got {int(key)}")
    if isinstance(key, np.random.SeedSequence) or (
        isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))
    ):
        return np.random.default_rng(key)
    raise TypeError(
        "key must be a numpy.random.Generator, an int seed, a numpy.random.SeedSequence or a Seed, "
        f"got {type(key).__name__}"
    )


def _rows(logits: np.ndarray) -> np.ndarray:
    """The logits as a 2-D (rows, V) array in compute precision (float32, or float64).

    Rows stay a view when each row is contiguous (a broadcast row, a ``model_out[:, -1]`` slice):
    every pass reads a row as one run of memory, whatever the step between rows. Logits whose
    rows are strided (Fortran order, a transpose) are copied once to C order, because every pass
    over a strided row touches a cache line per logit, and row sums over it would lose NumPy's
    pairwise summation.
    """
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    x = logits.reshape(-1, logits.shape[-1])  # a copy (in C order) only when no view exists
    if x.shape[1] > 1 and x.strides[1] != x.itemsize:
        return _c_order(x, dtype)
    return x.astype(dtype, copy=False)


def _c_order(x: np.ndarray, dtype: Any) -> np.ndarray:
    """A C-ordered copy of a 2-D array whose rows are strided, tile by tile.

    Both the tile read and the tile written stay in cache; one whole-array copy across layouts
    would stride through memory on one side (measured: 2-3x slower at 256 x 50257).
    """
    out = np.empty(x.shape, dtype)
    for start in range(0, x.shape[0], TILE):
        for column in range(0, x.shape[1], TILE):
            tile = (slice(start, start + TILE), slice(column, column + TILE))
            out[tile] = x[tile]
    return out


def _shaped_rows(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """`_rows`, then the logit shaping when ``params`` asks for it.

    The shaping makes a new array: the caller's logits are never written.
    """
    x = _rows(logits)
    if _shaping.present(params):
        x = _shaping.shape(x, params, logits.shape[:-1], np)
    return x


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
    """Kept sets of some rows: ``index[r, j]`` is kept iff ``logit[r, j] >= cut[r]`` (any order)."""

    rows: np.ndarray  # (R,) which rows of the batch
    index: np.ndarray  # (R, L) token ids
    logit: np.ndarray  # (R, L) their tempered logits (row maximum at 0), -inf for padding
    cut: np.ndarray  # (R,) the smallest kept tempered logit


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
    return np.maximum.reduceat(x, np.arange(0, x.shape[1], BLOCK), axis=1)


def _choose_blocks(block_max: np.ndarray, n_blocks: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The ``n_blocks`` blocks of each row with the largest maxima, and the smallest of those.

    Every token outside the chosen blocks is ``<=`` the returned threshold. Returns
    ``(None, -inf)`` when the whole row is to be taken.
    """
    total = block_max.shape[1]
    if 2 * n_blocks >= total or total <= 4:  # gathering most blocks costs more than the whole row
        return None, np.full(block_max.shape[0], -np.inf, block_max.dtype)
    blocks = np.argpartition(block_max, total - n_blocks, axis=-1)[:, total - n_blocks :]
    return blocks, np.take_along_axis(block_max, blocks, -1).min(axis=-1)


def _gather(x: np.ndarray, rows: np.ndarray, blocks: np.ndarray | None) -> np.ndarray:
    """The logits of the chosen blocks of ``rows``, block after block (the whole rows for None).

    Positions past the end of the vocabulary (in a short last block) get the logit ``-inf``.
    """
    vocab = x.shape[1]
    if blocks is None:
        return x[rows]
    if vocab % BLOCK == 0:  # copy whole blocks rather than single tokens
        return x.reshape(x.shape[0], -1, BLOCK)[rows[:, None], blocks].reshape(rows.size, -1)
    index = (blocks[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(rows.size, -1)
    past_end = index >= vocab
    np.minimum(index, vocab - 1, out=index)
    value = x[rows[:, None], index]
    value[past_end] = -np.inf
    return value


def _compact(keep: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries where ``keep`` holds, moved to the front of each row, with their columns.

    Returns ``(column, value)``, both (R, W) with W the largest count; padding is ``-inf``.
    """
    n_rows, width = keep.shape
    flat = np.flatnonzero(keep)  # much faster than a 2-D nonzero
    row, column = np.divmod(flat, width)
    counts = np.bincount(row, minlength=n_rows)
    position = np.arange(flat.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out_width = max(int(counts.max()), 1)
    out_column = np.zeros((n_rows, out_width), np.int64)
    out_value = np.full((n_rows, out_width), -np.inf, value.dtype)
    out_column[row, position] = column
    out_value[row, position] = value.reshape(-1)[flat]
    return out_column, out_value


def _outside_mass(block_max: np.ndarray, blocks: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                  vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on ``sum(exp(z))`` over the tokens outside ``blocks`` (float64).

    A block holds its maximum (lower bound) and at most ``n_b`` tokens no larger (upper bound).
    The tempered block maxima are computed like the tokens' own tempered logits, so the bounds
    hold for the values the pipeline works with; the slack covers the exponential's rounding.
    """
    z = (block_max - row_max[:, None]) / temperature[:, None]
    weight = np.exp(z.astype(np.float64))
    np.put_along_axis(weight, blocks, 0.0, axis=-1)
    sizes = np.full(block_max.shape[1], float(BLOCK))
    sizes[-1] = vocab - BLOCK * (block_max.shape[1] - 1)
    return weight.sum(axis=-1) * (1 - 1e-9), (weight @ sizes) * (1 + 1e-9)


def _row_chunks(n_rows: int, vocab: int) -> list[slice]:
    """Slices of about ``CHUNK`` logits each, whole rows, so that temporaries stay in cache."""
    step = max(1, CHUNK // vocab)
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _without(weight: np.ndarray, index: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """``weight`` with the entries ``index[r, j]`` whose ``logit[r, j]`` is finite set to 0."""
    inside = logit > -np.inf
    weight[np.broadcast_to(np.arange(index.shape[0])[:, None], index.shape)[inside], index[inside]] = 0
    return weight


def _outside_mass_fine(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                       index: np.ndarray, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds within 6.2% on the mass of the tokens of ``rows`` other than ``index[logit > -inf]``.

    Costs a few cheap passes instead of an exponential: writing ``z log2(e) = n + f`` with
    ``0 <= f < 1``, the float32 whose exponent field is ``n`` and whose mantissa is ``f`` (the
    bits of ``int((z log2(e) + 127) * 2**23)``) equals ``2**n (1 + f)``, and
    ``2**f <= 1 + f <= 1.0615 * 2**f``. A 1e-4 slack covers the rounding of the arithmetic.
    """
    total = np.empty(rows.size)
    scale = (np.log2(np.e) * 2**23 / temperature.astype(np.float64))[:, None].astype(x.dtype)
    chunks = _row_chunks(rows.size, x.shape[1])
    work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)  # reused: no page faults
    bits = np.empty(work.shape, np.int32)
    for part in chunks:
        w, b = work[: rows[part].size], bits[: rows[part].size]
        _subtract_rows(x, rows[part], row_max[part], out=w)
        with np.errstate(over="ignore"):  # a logit near -float32 max: -inf, clamped below
            w *= scale[part]
        w += 127 * 2**23
        np.maximum(w, 2**23, out=w)  # below 2**-126 counts as 2**-126: still an upper bound
        np.copyto(b, w, casting="unsafe")  # truncation: the floor of a positive value
        total[part] = _without(b.view(np.float32), index[part], logit[part]).sum(axis=-1)
    low = np.maximum(total * (1 - 1e-4) / 1.0615 - x.shape[1] * 2.0**-126, 0.0)
    return low, total * (1 + 1e-4)


def _outside_mass_exact(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                        index: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """The mass of the tokens of ``rows`` other than ``index[logit > -inf]`` (float64)."""
    total = np.empty(rows.size)
    chunks = _row_chunks(rows.size, x.shape[1])
    work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)
    for part in chunks:
        e = _tempered_into(work[: rows[part].size], x, rows[part], row_max[part], temperature[part])
        np.exp(e, out=e)
        total[part] = _without(e, index[part], logit[part]).sum(axis=-1, dtype=np.float64)
    return total


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
        index, value = np.broadcast_to(np.arange(x.shape[1]), gathered.shape), gathered
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


def _pipeline(x: np.ndarray, prm: _Rows) -> tuple[_Kept | None, np.ndarray]:
    """Decide every row's kept set. ``x`` is (N, V) in compute precision."""
    n_rows = x.shape[0]
    greedy = prm.temperature == 0
    block_max = None if greedy.all() else _block_maxima(x)
    row_max = x.max(axis=-1) if block_max is None else block_max.max(axis=-1)
    status = _status(row_max)
    if status.any():
        return None, status

    first = np.zeros(n_rows, np.int64)
    greedy_rows = np.flatnonzero(greedy)
    if greedy_rows.size:
        first[greedy_rows] = (x if greedy_rows.size == n_rows else x[greedy_rows]).argmax(axis=-1)

    truncating = ~greedy & ((prm.top_k > 0) | (prm.top_p < 1) | (prm.min_p > 0))
    cut = np.full(n_rows, -np.inf, x.dtype)
    groups = []
    pending = np.flatnonzero(truncating)
    if pending.size:
        n_blocks = _first_blocks(block_max[pending], row_max[pending], prm.take(pending))
        while pending.size:
            group, exhausted = _truncate_rows(x, pending, prm.take(pending), block_max[pending],
                                              row_max[pending], n_blocks)
            groups.append(group)
            cut[group.rows] = group.cut
            pending = pending[exhausted]
            n_blocks *= GROWTH
    dense = ~greedy & ~truncating
    return _Kept(row_max, greedy, first, dense, cut, block_max, groups), status


def _tempered_into(out: np.ndarray, x: np.ndarray, rows: np.ndarray, row_max: np.ndarray,
                   temperature: np.ndarray) -> np.ndarray:
    """`_tempered` of ``x[rows]``, written into ``out`` (no allocation; the same arithmetic)."""
    _subtract_rows(x, rows, row_max, out=out)
    out /= np.where(temperature == 0, 1, temperature).astype(x.dtype)[:, None]
    return out


def _subtract_rows(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, out: np.ndarray) -> None:
    """``out = x[rows] - row_max[:, None]`` in one pass (no copy of a single row first).

    ``np.take`` copies a source that is not C-contiguous whole before taking from it, so rows of
    a view (a broadcast or sliced batch) are gathered by indexing, which reads only those rows.
    """
    if rows.size == 1:
        np.subtract(x[rows[0]], row_max[0], out=out[0])
        return
    if x.flags.c_contiguous:
        np.take(x, rows, axis=0, out=out)
    else:
        out[...] = x[rows]
    out -= row_max[:, None]


def _tempered(x: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
              in_place: bool = False) -> np.ndarray:
    """``(x - max) / T`` per row, in a new C-ordered array; rows with ``T == 0`` give 0 at the max.

    With ``in_place``, in ``x`` instead (a C-ordered array of the backend's own).
    """
    safe = np.where(temperature == 0, 1, temperature).astype(x.dtype)
    out = np.subtract(x, row_max[:, None], out=x if in_place else None, order="C")
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
    if isinstance(params, Chain):
        return _process_chain(logits, params)
    batch_shape = logits.shape[:-1]
    x = _shaped_rows(logits, params)
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    # A copy made by `_rows` (strided rows, a narrower dtype) is the output's buffer.
    out = _tempered(x, kept.row_max, prm.temperature, in_place=not np.may_share_memory(x, logits))
    cut = kept.cut[:, None]
    if np.any(cut > -np.inf):
        np.copyto(out, -np.inf, where=out < cut)
    greedy_rows = np.flatnonzero(kept.greedy)
    if greedy_rows.size:
        out[greedy_rows] = -np.inf
        out[greedy_rows, kept.first[greedy_rows]] = 0
    if _strategies.present(params):
        out = _refined(out, params, batch_shape)
    return out.reshape(logits.shape), status.reshape(batch_shape)


def _chain_rows(logits: np.ndarray, chain: Chain, shaped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The rows in compute precision, shaped, and their status, for a `Chain` (bad rows are reported)."""
    x = _rows(logits)
    if shaped and chain.shaping is not None and _shaping.present(chain.shaping):
        x = _shaping.shape(x, chain.shaping, logits.shape[:-1], np)
    return x, _status(np.max(x, axis=-1))


def _process_chain(logits: np.ndarray, chain: Chain,
                   only: tuple[str, ...] | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    x, status = _chain_rows(logits, chain)
    batch_shape = logits.shape[:-1]
    if np.any(status != ROW_OK):
        return None, status.reshape(batch_shape)
    min_keep_on = bool(np.any(np.asarray(chain.min_keep) != 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cand = None if only is not None else _chain_candidates(x, chain, batch_shape, min_keep_on)
        if cand is None or not cand.exact.all():
            z = _chain.run(x, chain, batch_shape, _strategies.NUMPY_SEARCHES, np, min_keep_on, only)
        else:
            z = np.full(x.shape, -np.inf, cand.z.dtype)
            inside = cand.index < x.shape[1]
            z[np.nonzero(inside)[0], cand.index[inside]] = cand.z[inside]
    return z.astype(x.dtype, copy=False).reshape(logits.shape), status.reshape(batch_shape)


class _ChainCandidates(NamedTuple):
    z: np.ndarray  # (N, W) the chain's result on the candidates (-inf on padding)
    exact: np.ndarray  # (N,) whether that is the row's result
    index: np.ndarray  # (N, W) the candidates' token ids (V: padding)


def _chain_candidates(x: np.ndarray, chain: Chain, batch_shape: tuple[int, ...],
                      min_keep_on: bool) -> _ChainCandidates | None:
    """The chain on its leading top-k set, found in the blocks with the largest maxima.

    ``n = max(k, min_keep)`` tokens lie in at most ``n`` blocks, so the ``n + 1`` blocks with the
    largest maxima hold them unless ties reach below (`_chain.run_candidates` tells); the tokens at
    or above each row's ``n``-th largest are packed, in vocabulary order, and the chain runs on
    them. None when the chain does not start with top-k or the blocks would cover the rows.
    """
    first = _chain.leading_top_k(chain)
    if first is None:
        return None
    def column(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value), batch_shape).reshape(-1).astype(np.int64)

    k = column(chain.steps[first].values[0])
    n = np.maximum(np.maximum(k, column(chain.min_keep)) if min_keep_on else k, 1)
    n_max = int(n.max())
    blocks, bound = _choose_blocks(_block_maxima(x), n_max + 1)
    if blocks is None or n_max >= x.shape[1]:
        return None
    blocks = np.sort(blocks, axis=-1)  # vocabulary order: the first maximum comes first
    rows = np.arange(x.shape[0])
    values = _gather(x, rows, blocks)
    width = values.shape[1]
    kth = np.empty(rows.size, values.dtype)
    for count in np.unique(n):  # the n-th largest by partition, one per distinct n (usually one)
        at = n == count
        kth[at] = np.partition(values[at], width - count, axis=-1)[:, width - count]
    keep = values >= kth[:, None]
    sizes = keep.sum(axis=-1)
    slot = np.cumsum(keep, axis=-1) - 1  # each kept token's place in its packed row, in order
    packed = np.full((rows.size, int(sizes.max())), -np.inf, values.dtype)
    index = np.full(packed.shape, x.shape[1], np.int64)
    kept_rows, kept_at = np.nonzero(keep)
    packed[kept_rows, slot[kept_rows, kept_at]] = values[kept_rows, kept_at]
    index[kept_rows, slot[kept_rows, kept_at]] = blocks[kept_rows, kept_at // BLOCK] * BLOCK + kept_at % BLOCK
    z, exact = _chain.run_candidates(packed, bound, chain, batch_shape, _strategies.NUMPY_SEARCHES, np,
                                     min_keep_on)
    return _ChainCandidates(z, exact & (kth > bound) & (k > 0), index)


def _refined(z: np.ndarray, params: SamplingParams, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Processed rows ``(N, V)`` after the steps of `_strategies` (typical-p ... XTC)."""
    min_keep_on = params.min_keep is not None and bool(np.any(np.asarray(params.min_keep) != 1))
    strategy = _strategies.rows(params, batch_shape, z.dtype, np, min_keep_on)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _strategies.refine(z, strategy, _strategies.NUMPY_SEARCHES, np).astype(z.dtype, copy=False)


def probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """``softmax(process_logits(...))``: float32, or float64 for float64 input."""
    z, status = process_logits(logits, params)
    if z is None:
        return None, status
    e = np.exp(z, out=z)  # every row's largest kept logit is 0: no shift needed
    e /= e.sum(axis=-1, keepdims=True)
    return e, status


def sample(key: np.random.Generator | SeedWords, logits: np.ndarray,
           params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """One exact draw per row from the kept set, by inverse CDF on two uniforms per row.

    For a `Seed`, one uniform per row, in token order (`_draw_in_token_order`).
    """
    batch_shape = logits.shape[:-1]
    if isinstance(params, Chain) or _strategies.present(params):
        return _sample_refined(key, logits, params)
    x = _shaped_rows(logits, params)
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    seeded = isinstance(key, SeedWords)
    uniform = uniforms(key, batch_shape, np).reshape(-1) if seeded else key.random((x.shape[0], 2))
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    if seeded:
        return _draw_in_token_order(x, kept, prm, uniform).reshape(batch_shape), status.reshape(batch_shape)
    ids = kept.first.copy()
    dense = np.flatnonzero(kept.dense)
    if dense.size:
        ids[dense] = _draw_dense(x, dense, kept.block_max[dense], kept.row_max[dense], prm.temperature[dense],
                                 uniform[dense])
    for group in kept.groups:
        ids[group.rows] = _draw_candidates(group.index, group.logit, group.cut, uniform[group.rows, 1])
    return ids.reshape(batch_shape), status.reshape(batch_shape)


def _sample_refined(key: np.random.Generator | SeedWords, logits: np.ndarray,
                    params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """`sample` through whole rows (a `Chain`, or the steps of `_strategies`): one uniform per row."""
    batch_shape = logits.shape[:-1]
    n_rows = int(np.prod(batch_shape, dtype=np.int64))
    uniform = uniforms(key, batch_shape, np).reshape(-1) if isinstance(key, SeedWords) else key.random(n_rows)
    if isinstance(params, Chain):  # a chain that starts with top-k draws from its candidates
        x, status = _chain_rows(logits, params)
        min_keep_on = bool(np.any(np.asarray(params.min_keep) != 1))
        cand = None
        if np.all(status == ROW_OK):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                cand = _chain_candidates(x, params, batch_shape, min_keep_on)
        if cand is not None and cand.exact.all():
            at = _draw_by_blocks(np.exp(cand.z), uniform.astype(np.float64))
            return np.take_along_axis(cand.index, at[:, None], -1)[:, 0].reshape(batch_shape), \
                status.reshape(batch_shape)
    z, status = process_logits(logits, params)
    if z is None:
        return None, status
    weight = np.exp(z.reshape(n_rows, -1))
    return _draw_by_blocks(weight, uniform.astype(np.float64)).reshape(batch_shape), status


def _draw_in_token_order(x: np.ndarray, kept: _Kept, prm: _Rows, uniform: np.ndarray) -> np.ndarray:
    """The JAX backend's draw, for `Seed` keys: one uniform per row, inverse CDF in token-id order.

    Over the kept set, so that the same uniform picks the same token on both backends. Dense rows
    take their whole row (no head/tail mixture); candidate lists are put in token order first (they
    come in block order).
    """
    u = uniform.astype(np.float64)
    ids = kept.first.copy()
    dense = np.flatnonzero(kept.dense)
    chunks = _row_chunks(dense.size, x.shape[1])
    if dense.size:
        work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)
    for part in chunks:
        rows = dense[part]
        weight = _tempered_into(work[: rows.size], x, rows, kept.row_max[rows], prm.temperature[rows])
        ids[rows] = _draw_by_blocks(np.exp(weight, out=weight), u[rows])
    for group in kept.groups:
        index, logit = group.index, group.logit
        if not np.all(index[:, 1:] > index[:, :-1]):
            order = np.argsort(index, axis=-1, kind="stable")
            index, logit = np.take_along_axis(index, order, -1), np.take_along_axis(logit, order, -1)
        ids[group.rows] = _draw_candidates(index, logit, group.cut, u[group.rows])
    return ids


def _pick(cumulative: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """First position whose cumulative weight exceeds ``target``, never a zero-weight position.

    A position of zero weight never exceeds a target that its predecessor did not; only rounding
    can push the target past the end, and then the last position of positive weight is taken.
    """
    position = (cumulative <= target[:, None]).sum(axis=-1)
    last_positive = weight.shape[1] - 1 - np.argmax(weight[:, ::-1] > 0, axis=-1)
    return np.minimum(position, last_positive)


def _draw_candidates(index: np.ndarray, logit: np.ndarray, cut: np.ndarray,
                     uniform: np.ndarray) -> np.ndarray:
    """Inverse CDF over the candidates whose tempered logit is at least ``cut``."""
    if logit.shape[1] > WIDE:  # a whole row: block sums instead of a row-long cumulative sum
        weight = np.exp(logit)
        weight[logit < cut[:, None]] = 0.0
        position = _draw_by_blocks(weight, uniform)
    else:
        weight = np.exp(logit.astype(np.float64))
        weight[logit < cut[:, None]] = 0.0
        cumulative = np.cumsum(weight, axis=-1)
        position = _pick(cumulative, uniform * cumulative[:, -1], weight)
    return np.take_along_axis(index, position[:, None], -1)[:, 0]


def _draw_dense(x: np.ndarray, rows: np.ndarray, block_max: np.ndarray, row_max: np.ndarray,
                temperature: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Exact draws from every finite token of ``rows``, by the head/tail mixture (module docstring).

    ``uniform[:, 0]`` picks the part, ``uniform[:, 1]`` the token inside it.
    """
    head = _head(x, rows, block_max, row_max, temperature, DENSE_HEAD, bounds=True)
    head_weight = np.exp(head.logit.astype(np.float64))
    head_mass = head_weight.sum(axis=-1)
    # The head is picked iff u * (head + tail) < head; bounds on the tail settle most rows.
    in_head = uniform[:, 0] * (head_mass + head.high) < head_mass
    unsure = np.flatnonzero(~in_head & (uniform[:, 0] * (head_mass + head.low) < head_mass))
    if unsure.size:
        _, high = _outside_mass_fine(x, rows[unsure], row_max[unsure], temperature[unsure],
                                     head.index[unsure], head.logit[unsure])
        in_head[unsure] = uniform[unsure, 0] * (head_mass[unsure] + high) < head_mass[unsure]
    ids = np.empty(rows.size, np.int64)
    maybe_tail = np.flatnonzero(~in_head)
    for part in _row_chunks(maybe_tail.size, x.shape[1]):  # rare: the tail's exact weights decide
        some = maybe_tail[part]
        weight = _tempered(x[rows[some]], row_max[some], temperature[some], in_place=True)
        np.exp(weight, out=weight)
        tail = _without(weight, head.index[some], head.logit[some]).sum(axis=-1, dtype=np.float64)
        in_head[some] = uniform[some, 0] * (head_mass[some] + tail) < head_mass[some]
        in_tail = ~in_head[some]
        ids[some[in_tail]] = _draw_by_blocks(weight[in_tail], uniform[some[in_tail], 1])

    chosen = np.flatnonzero(in_head)
    cumulative = np.cumsum(head_weight[chosen], axis=-1)
    position = _pick(cumulative, uniform[chosen, 1] * cumulative[:, -1], head_weight[chosen])
    ids[chosen] = np.take_along_axis(head.index[chosen], position[:, None], -1)[:, 0]
    return ids


def _draw_by_blocks(weight: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse CDF over whole rows of weights without a row-long cumulative sum: block, then token."""
    n_rows, vocab = weight.shape
    full = vocab // BLOCK
    sums = [weight[:, : full * BLOCK].reshape(n_rows, full, BLOCK).sum(axis=-1)] if full else []
    if vocab % BLOCK:
        sums.append(weight[:, full * BLOCK :].sum(axis=-1, keepdims=True))
    block_weight = np.concatenate(sums, axis=1).astype(np.float64)
    block_cumulative = np.cumsum(block_weight, axis=-1)
    target = uniform * block_cumulative[:, -1]
    block = _pick(block_cumulative, target, block_weight)
    previous = np.take_along_axis(block_cumulative, np.maximum(block - 1, 0)[:, None], -1)[:, 0]
    before = np.where(block > 0, previous, 0.0)

    index = block[:, None] * BLOCK + np.arange(BLOCK)
    inside = index < vocab
    in_block = np.take_along_axis(weight, np.minimum(index, vocab - 1), -1).astype(np.float64)
    in_block[~inside] = 0.0
    position = _pick(np.cumsum(in_block, axis=-1), target - before, in_block)
    return block * BLOCK + position


# --------------------------------------------------------------------------------------------
# Speculative verification


def verify_draft(key: np.random.Generator, logits: np.ndarray, draft_ids: np.ndarray,
                 draft_probs: np.ndarray | None,
                 params: SamplingParams) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray]:
    """Accept drafts by the standard rule, then one token from the residual or the bonus position.

    ``logits`` is ``(B, K + 1, V)``; returns ``(tokens (B, K + 1), num_accepted (B,))`` and the
    status of every target position ``(B, K + 1)``.
    """
    batch, positions, _ = logits.shape
    uniform = key.random((batch, positions))
    p, status = probs(logits, _acceptance.per_position(params, positions, np))
    if p is None:
        return None, status
    decision = _acceptance.accept(p, draft_ids, draft_probs, uniform, np)
    last = _draw_by_blocks(decision.residual, uniform[:, -1])
    tokens = _acceptance.emitted(draft_ids.astype(np.int64), decision.num_accepted, last, np)
    return (tokens, decision.num_accepted.astype(np.int64)), status


# ============================================================================================
# Log-probabilities: built on `_pipeline`'s kept sets; one exponential pass over the rows (two for
# raw log-probabilities at a temperature), fused with the rank count so that each row is read
# from memory once; the top-n from the kept sets, or from the blocks with the largest maxima.


@dataclass
class _RowTotals:
    """What one pass over every row gives `logprobs`, one entry per row."""

    mass: np.ndarray  # sum(exp((x - max) / T)) over the finite tokens (float64)
    finite: np.ndarray  # how many tempered logits are finite
    above: np.ndarray  # how many logits exceed the row's chosen logit (the rank, less 1)
    raw_mass: np.ndarray | None  # sum(exp(x - max)) (float64), when asked for


def _row_totals(x: np.ndarray, row_max: np.ndarray, temperature: np.ndarray, chosen: np.ndarray,
                raw: bool) -> _RowTotals:
    """`_RowTotals` of every row, chunk by chunk in reused buffers (as `_outside_mass_exact`).

    The comparison, the exponentials and the sums all read a chunk while it is in cache. With ``raw``, rows
    whose temperature is not 1 also sum ``exp(x - max)`` before dividing (the same values a pass at
    temperature 1 would give); the others' raw mass is their mass.
    """
    n_rows, vocab = x.shape
    mass, finite, above = np.empty(n_rows), np.empty(n_rows, np.int64), np.empty(n_rows, np.int64)
    raw_mass = np.empty(n_rows) if raw else None
    chunks = _row_chunks(n_rows, vocab)
    work = np.empty((chunks[0].stop - chunks[0].start, vocab), x.dtype)
    flags = np.empty(work.shape, bool)
    spare = np.empty(work.shape, x.dtype) if raw else None
    every = np.arange(n_rows)
    for part in chunks:
        n = every[part].size
        w, f = work[:n], flags[:n]
        above[part] = np.count_nonzero(np.greater(x[part], chosen[part], out=f), axis=1)
        _subtract_rows(x, every[part], row_max[part], out=w)
        t = temperature[part]
        if raw and np.any(t != 1):
            raw_mass[part] = np.exp(w, out=spare[:n]).sum(axis=-1, dtype=np.float64)
        w /= np.where(t == 0, 1, t).astype(x.dtype)[:, None]
        finite[part] = np.count_nonzero(np.greater(w, -np.inf, out=f), axis=1)
        mass[part] = np.exp(w, out=w).sum(axis=-1, dtype=np.float64)
    if raw:
        raw_mass = np.where(temperature != 1, raw_mass, mass)
    return _RowTotals(mass, finite, above, raw_mass)


def _largest(index: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest ``values`` per row with their ``index``, descending, ties by smaller index.

    Wide rows are first cut to the entries at or above their ``n``-th largest value (a partition,
    not a sort), ties at it kept, so the sort that orders ties by index runs on a few entries.
    """
    width = values.shape[1]
    if width < n:  # a short candidate list: -inf entries after it (callers fill their ids)
        index = np.pad(index, ((0, 0), (0, n - width)))
        values = np.pad(values, ((0, 0), (0, n - width)), constant_values=-np.inf)
    elif width > 4 * n:
        nth = np.partition(values, width - n, axis=-1)[:, width - n]
        column, values = _compact(values >= nth[:, None], values)
        index = np.take_along_axis(index, column, -1)
    order = np.lexsort((index, -values), axis=-1)[:, :n]
    return np.take_along_axis(index, order, -1).astype(np.int64), np.take_along_axis(values, order, -1)


def _top_n(x: np.ndarray, rows: np.ndarray, block_max: np.ndarray, n: int,
           value_of: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest ``value_of(rows, x[rows])`` per row, descending, ties by smaller index.

    ``value_of(rows, values)`` maps logits of ``rows`` (R, W) to the ranked values, element-wise
    and monotone non-decreasing in the logit. Every token outside the blocks with the largest
    maxima is at most ``t``, their smallest maximum, so its value is at most ``f(t)``: the
    gathered values above ``f(t)`` are all of the row's. A row with ``n`` of them takes its top
    there; the others retry with ``GROWTH`` times as many blocks, and finally with the whole row.
    ``2 n + 1`` blocks first: ``n + 1`` would do when the other ``n`` maxima stay above ``f(t)``,
    the rest leaves room for ties and for rounding that merges values.
    """
    top_ids = np.zeros((rows.size, n), np.int64)
    top_values = np.full((rows.size, n), -np.inf, x.dtype)
    pending = np.arange(rows.size)
    n_blocks = 2 * n + 1
    while pending.size:
        some = rows[pending]
        blocks, threshold = _choose_blocks(block_max[pending], n_blocks)
        gathered = _gather(x, some, blocks)
        if blocks is None:
            index = np.broadcast_to(np.arange(x.shape[1]), gathered.shape)
            top_ids[pending], top_values[pending] = _largest(index, value_of(some, gathered), n)
            break
        values = value_of(some, gathered)
        above = values > value_of(some, threshold[:, None])
        done = np.count_nonzero(above, axis=-1) >= n
        if done.any():
            column, value = _compact(above[done], values[done])
            index = np.take_along_axis(blocks[done], column // BLOCK, -1) * BLOCK + column % BLOCK
            top_ids[pending[done]], top_values[pending[done]] = _largest(index, value, n)
        pending = pending[~done]
        n_blocks *= GROWTH
    return top_ids, top_values


def _top_of_kept(group: _Candidates, n: int, log_kept: np.ndarray,
                 vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The processed top-n of a group's rows, from its candidates alone.

    The kept set is the candidates at or above the cut, each at ``z - log_kept``; every other
    token is ``-inf``, so a row keeping fewer than ``n`` continues with the smallest ids outside
    its kept set (among the first ``n + kept`` ids, at most ``kept`` of which are excluded).
    """
    inside = group.logit >= group.cut[:, None]
    values = np.where(inside, group.logit - log_kept[:, None], -np.inf)
    top_ids, top_values = _largest(group.index, values, n)
    count = np.count_nonzero(top_values > -np.inf, axis=-1)
    short = np.flatnonzero(count < n)
    if short.size:
        first = np.arange(min(2 * n, vocab))
        listed = np.arange(n)[None, :] < count[short, None]
        taken = ((first[None, :, None] == top_ids[short, None, :]) & listed[:, None, :]).any(axis=-1)
        free, _ = _compact(~taken, np.zeros(taken.shape))  # ids in increasing order
        fill = np.take_along_axis(free, np.maximum(np.arange(n) - count[short, None], 0), -1)
        top_ids[short] = np.where(listed, top_ids[short], fill)
    return top_ids, top_values


def logprobs(logits: np.ndarray, ids: Any, params: SamplingParams, kind: str,  # noqa: C901
             top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """``(token, rank, top_ids, top_logprobs, kept_log_mass, kept_count)`` and the row status.

    Log-probabilities are ``z - log(sum(exp(z)))`` over the distribution's support, in the
    compute precision; the kept sets are `_pipeline`'s (a group's candidates at or above its cut).
    The shaping applies to the processed kind (the public function refuses it with ``"raw"``).
    """
    if isinstance(params, Chain):
        return _logprobs_chain(logits, ids, params, kind, top_n)
    if _strategies.present(params):
        return _logprobs_refined(logits, ids, params, kind, top_n)
    x = _shaped_rows(logits, params) if kind == "processed" else _rows(logits)
    batch_shape = logits.shape[:-1]
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    n_rows = x.shape[0]
    ids = np.asarray(ids).reshape(-1).astype(np.int64)
    row_max = kept.row_max
    temperature = np.where(kept.greedy, 1, prm.temperature).astype(x.dtype)

    chosen = np.take_along_axis(x, ids[:, None], -1)
    totals = _row_totals(x, row_max, temperature, chosen, raw=kind == "raw")
    tempered_mass, finite = totals.mass, totals.finite
    kept_mass = tempered_mass.copy()
    kept_count = finite.copy()
    for group in kept.groups:
        inside = group.logit >= group.cut[:, None]
        kept_mass[group.rows] = np.where(inside, np.exp(group.logit.astype(np.float64)), 0.0).sum(axis=-1)
        kept_count[group.rows] = np.count_nonzero(inside, axis=-1)
    kept_mass[kept.greedy] = 1.0  # the first argmax, at z = 0
    kept_count[kept.greedy] = 1
    truncated = ~kept.greedy & (kept_count < finite)
    kept_log_mass = np.where(truncated, np.minimum(np.log(kept_mass) - np.log(tempered_mass), 0), 0.0)
    log_kept = np.log(kept_mass).astype(x.dtype)
    if kind == "raw":
        log_raw = np.log(totals.raw_mass).astype(x.dtype)

    def value_of(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The log-probabilities of logits ``values`` (R, W) of ``rows`` (greedy rows: not here)."""
        shifted = values - row_max[rows, None]
        if kind == "raw":
            return shifted - log_raw[rows, None]
        z = shifted / temperature[rows, None]  # `_tempered`'s arithmetic: the pipeline's kept set
        return np.where((z >= kept.cut[rows, None]) & (z > -np.inf), z - log_kept[rows, None], -np.inf)

    every = np.arange(n_rows)
    token = value_of(every, chosen)[:, 0]
    rank = 1 + totals.above

    top_ids = np.zeros((n_rows, top_n), np.int64)
    top_logprobs = np.full((n_rows, top_n), -np.inf, x.dtype)
    ranked = every if kind == "raw" else np.flatnonzero(~kept.greedy)
    greedy_rows = np.flatnonzero(kept.greedy) if kind == "processed" else every[:0]
    if greedy_rows.size:
        # The processed greedy row: its first argmax, then every other token (-inf) by index.
        first = kept.first[greedy_rows]
        token[greedy_rows] = np.where(ids[greedy_rows] == first, 0, -np.inf)
        if top_n:
            others = np.arange(top_n - 1)[None, :]
            others = others + (others >= first[:, None])
            top_ids[greedy_rows] = np.concatenate([first[:, None], others], axis=1)
            top_logprobs[greedy_rows, 0] = 0
    if top_n and kind == "processed":
        # A truncated row's kept set is its group's candidates at or above the cut: no gather.
        for group in (g for g in kept.groups if g.rows.size):
            top_ids[group.rows], top_logprobs[group.rows] = _top_of_kept(group, top_n, log_kept[group.rows],
                                                                         x.shape[1])
        ranked = np.flatnonzero(kept.dense)
    if top_n and ranked.size:
        block_max = _block_maxima(x[ranked]) if kept.block_max is None else kept.block_max[ranked]
        top_ids[ranked], top_logprobs[ranked] = _top_n(x, ranked, block_max, top_n, value_of)

    fields = (token, rank, top_ids, top_logprobs, kept_log_mass.astype(x.dtype), kept_count)
    top_shape = batch_shape + (top_n,)
    shapes = (batch_shape, batch_shape, top_shape, top_shape, batch_shape, batch_shape)
    return tuple(f.reshape(s) for f, s in zip(fields, shapes, strict=True)), status.reshape(batch_shape)


def _logprobs_refined(logits: np.ndarray, ids: Any, params: SamplingParams, kind: str,
                      top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """`logprobs` with the steps of `_strategies`: the pipeline's answer, then the refined rows."""
    fields, status = logprobs(logits, ids, _strategies.without(params), kind, top_n)
    if fields is None:
        return None, status
    z, _ = process_logits(logits, _strategies.without(params))
    vocab = logits.shape[-1]
    z = z.reshape(-1, vocab)
    refined = _refined(z.copy(), params, logits.shape[:-1])
    rows_first = [f.reshape(len(z), *f.shape[logits.ndim - 1:]) for f in fields]
    with np.errstate(divide="ignore"):
        adjusted = _strategies.adjust_logprobs(rows_first, z, refined, np.asarray(ids).reshape(-1), kind, np,
                                               _stable_top_n(top_n))
    return tuple(a.reshape(f.shape) for a, f in zip(adjusted, fields, strict=True)), status


def _stable_top_n(n: int) -> Any:
    def top(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-values, axis=-1, kind="stable")[:, :n]
        return np.take_along_axis(values, order, -1), order.astype(np.int64)

    return top


def _logprobs_chain(logits: np.ndarray, ids: Any, chain: Chain, kind: str,
                    top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """`logprobs` for a `Chain`, on whole rows (`_chain.logprobs`)."""
    z, status = _process_chain(logits, chain)
    if z is None:
        return None, status
    tempered, _ = _process_chain(logits, chain, only=("temperature",))
    vocab = logits.shape[-1]
    x, _ = _chain_rows(logits, chain, shaped=kind == "processed")  # "raw": the logits as given
    with np.errstate(divide="ignore", invalid="ignore"):
        fields = _chain.logprobs(x, z.reshape(-1, vocab), tempered.reshape(-1, vocab),
                                 np.asarray(ids).reshape(-1).astype(np.int64), kind, _stable_top_n(top_n), np)
    batch_shape = logits.shape[:-1]
    top_shape = batch_shape + (top_n,)
    shapes = (batch_shape, batch_shape, top_shape, top_shape, batch_shape, batch_shape)
    return tuple(f.reshape(shape) for f, shape in zip(fields, shapes, strict=True)), status
