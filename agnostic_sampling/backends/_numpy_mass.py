"""Masses outside a row's candidates, bounded or exact (private to the NumPy backend).

`_numpy_pipeline`'s docstring tells how they settle kept sets and draws: free bounds from the
block maxima (`_outside_mass`), bounds within 6.2% from a few cheap passes (`_outside_mass_fine`),
and the exact float64 mass (`_outside_mass_exact`). Bounds only decide which rows pay for the
exact mass, so they may be summed in any order, e.g. over column-major rows where they lie.
"""

from __future__ import annotations

import numpy as np

from agnostic_sampling.backends._numpy_rows import BLOCK
from agnostic_sampling.backends._numpy_rows import CHUNK
from agnostic_sampling.backends._numpy_rows import _column_major
from agnostic_sampling.backends._numpy_rows import _row_chunks
from agnostic_sampling.backends._numpy_rows import _rows_at_hand
from agnostic_sampling.backends._numpy_rows import _subtract_rows
from agnostic_sampling.backends._numpy_rows import _tempered_into

COLUMN_ROWS = 64  # from this many column-major rows, the fine bounds read the columns, not a copy


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
    Many column-major rows are read where they lie (`_fine_mass_of_columns`), a few copied.
    """
    if _column_major(x) and rows.size >= COLUMN_ROWS:
        total = _fine_mass_of_columns(x, rows, row_max, temperature, index, logit)
    else:
        total = _fine_mass_of_rows(*_rows_at_hand(x, rows), row_max, temperature, index, logit)
    low = np.maximum(total * (1 - 1e-4) / 1.0615 - x.shape[1] * 2.0**-126, 0.0)
    return low, total * (1 + 1e-4)


def _fine_mass_of_rows(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                       index: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """`_outside_mass_fine`'s sum of bit patterns, whole rows chunk by chunk (one row: 1x memory)."""
    total = np.empty(rows.size)
    scale = (np.log2(np.e) * 2**23 / temperature.astype(np.float64))[:, None].astype(x.dtype)
    chunks = _row_chunks(rows.size, x.shape[1])
    work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)  # reused: no page faults
    # float32 work takes its own bit patterns, a row at a time (NumPy casts a 1-D array onto
    # itself in place; a 2-D one through a temporary copy): no second row-sized buffer.
    bits = work.view(np.int32) if x.dtype == np.float32 else np.empty(work.shape, np.int32)
    for part in chunks:
        w, b = work[: rows[part].size], bits[: rows[part].size]
        _subtract_rows(x, rows[part], row_max[part], out=w)
        _bit_bounds(w, scale[part])
        for row in range(w.shape[0]):  # truncation: the floor of a positive value
            np.copyto(b[row], w[row], casting="unsafe")
        total[part] = _without(b.view(np.float32), index[part], logit[part]).sum(axis=-1)
    return total


def _bit_bounds(w: np.ndarray, scale: np.ndarray) -> None:
    """``w`` (logits minus the row maximum) becomes ``(w * scale + 127 * 2**23)``, at least ``2**23``.

    Its floor is the bit pattern of the bound on ``exp`` (`_outside_mass_fine`).
    """
    with np.errstate(over="ignore"):  # a logit near -float32 max: -inf, clamped below
        w *= scale
    w += 127 * 2**23
    np.maximum(w, 2**23, out=w)  # below 2**-126 counts as 2**-126: still an upper bound


def _fine_mass_of_columns(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                          index: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """`_outside_mass_fine`'s sum of bit patterns for column-major ``x``, read where it lies.

    Tile by tile of tokens: ``rows`` taken from the transpose's tile along its rows (no copy of
    the rows), the same element-wise arithmetic, the excluded tokens zeroed, and each tile summed
    over its tokens in float64. Each tile reads every row's cache lines, so this pays from
    `COLUMN_ROWS` rows up (measured at 128256 tokens: 64 of 256 rows 22 ms against 24 ms for a
    copy and the C-order pass, 128 rows 40 against 54 ms; 8 rows 10.7 against 9.5 ms). The order
    of the sum differs from C order's, which only moves the bounds within their slack: the kept
    sets and draws, decided by the bounds or by exact masses, are those of C order.
    """
    vocab = x.shape[1]
    scale = (np.log2(np.e) * 2**23 / temperature.astype(np.float64)).astype(x.dtype)
    # The excluded tokens (row in ``rows``, token id), in token order, to be zeroed tile by tile.
    inside = logit > -np.inf
    excluded_row = np.broadcast_to(np.arange(rows.size)[:, None], index.shape)[inside]
    excluded_id = index[inside]
    order = np.argsort(excluded_id, kind="stable")
    excluded_row, excluded_id = excluded_row[order], excluded_id[order]
    total = np.zeros(rows.size)
    columns = x.T
    step = min(max(BLOCK, CHUNK // rows.size), 8192)
    for start in range(0, vocab, step):
        w = np.take(columns[start : start + step], rows, axis=1)  # (tokens, rows), C order
        w -= row_max
        _bit_bounds(w, scale)
        bits = w.astype(np.int32).view(np.float32)
        first, last = np.searchsorted(excluded_id, [start, start + w.shape[0]])
        bits[excluded_id[first:last] - start, excluded_row[first:last]] = 0
        total += bits.sum(axis=0, dtype=np.float64)
    return total


def _outside_mass_exact(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                        index: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """The mass of the tokens of ``rows`` other than ``index[logit > -inf]`` (float64).

    Column-major rows are copied to C order first.
    """
    x, rows = _rows_at_hand(x, rows)
    total = np.empty(rows.size)
    chunks = _row_chunks(rows.size, x.shape[1])
    work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)
    for part in chunks:
        e = _tempered_into(work[: rows[part].size], x, rows[part], row_max[part], temperature[part])
        np.exp(e, out=e)
        total[part] = _without(e, index[part], logit[part]).sum(axis=-1, dtype=np.float64)
    return total
