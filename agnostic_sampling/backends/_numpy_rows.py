"""The NumPy backend's rows (private to it): the logits as (rows, V), laid out for its passes.

In compute precision and a layout every pass reads well; the rows a pass needs; their tempering.

Rows that are contiguous (C order, a broadcast row, a ``[:, -1]`` slice) stay views; other
strided rows are copied to C order tile by tile, except column-major ones for a caller that reads
them only through the block maxima and `_take_rows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import _shaping

BLOCK = 256  # logits per block of the block-maximum pass
CHUNK = 2**17  # logits per chunk of the row-wise passes that must stay in cache
TILE = 256  # rows and columns of the tiles that copy strided rows to C order
COLUMN_TILE = 2048  # columns of the tiles that copy a few column-major rows
MANY_ROWS = 16  # from this many column-major rows, gathered from each tile of columns at once
GATHER_TILE = 4096  # columns of those tiles


def _rows(logits: np.ndarray, columns_ok: bool = False) -> np.ndarray:
    """The logits as a 2-D (rows, V) array in compute precision (float32, or float64).

    Rows stay a view when each row is contiguous (a broadcast row, a ``model_out[:, -1]`` slice):
    every pass reads a row as one run of memory, whatever the step between rows. Logits whose
    rows are strided (Fortran order, a transpose) are copied once to C order, because every pass
    over a strided row touches a cache line per logit, and row sums over it would lose NumPy's
    pairwise summation. With ``columns_ok`` (a caller that reads whole rows only through
    `_block_maxima` and `_take_rows`), column-major logits of the compute dtype stay a view.
    """
    dtype = np.float64 if logits.dtype == np.float64 else np.float32
    x = logits.reshape(-1, logits.shape[-1])  # a copy (in C order) only when no view exists
    if columns_ok and _column_major(x) and x.dtype == dtype:
        return x
    if x.shape[1] > 1 and x.strides[1] != x.itemsize:
        return _c_order(x, dtype)
    return x.astype(dtype, copy=False)


def _row_chunks(n_rows: int, vocab: int) -> list[slice]:
    """Slices of about ``CHUNK`` logits each, whole rows, so that temporaries stay in cache."""
    step = max(1, CHUNK // vocab)
    return [slice(start, start + step) for start in range(0, n_rows, step)]


def _column_major(x: np.ndarray) -> bool:
    """Whether the 2-D ``x`` is a transpose of a C-ordered array with more than one row."""
    return x.shape[0] > 1 and x.shape[1] > 1 and x.T.flags.c_contiguous


def _rows_at_hand(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, rows)`` laid out for passes over whole rows.

    As given, or for column-major ``x`` and several ``rows`` a C-ordered copy of those rows (one
    read of the columns) and their indices in it.
    """
    if rows.size > 1 and _column_major(x):
        return _take_rows(x, rows), np.arange(rows.size)
    return x, rows


def _take_rows(x: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x[rows]`` as a C-ordered array (into ``out`` if given), reading only those rows.

    Column-major rows are copied a tile of columns at a time, so that every cache line read
    (holding the same token of neighbouring rows) serves all of ``rows`` before it is evicted.
    Many rows are taken from each tile of the transpose, a contiguous block, along its rows (each
    token's values read in one run), then transposed into place: 1.9-2.1x faster than indexing
    the rows for 50 and 130 of 256 rows of 128256 tokens (measured), and slower for 3 or 5.
    """
    if out is None:
        out = np.empty((rows.size, x.shape[1]), x.dtype)
    if not _column_major(x):
        out[...] = x[rows]
        return out
    if rows.size >= MANY_ROWS:
        columns = x.T
        for column in range(0, x.shape[1], GATHER_TILE):
            tile = slice(column, column + GATHER_TILE)
            out[:, tile] = np.take(columns[tile], rows, axis=1).T
        return out
    for column in range(0, x.shape[1], COLUMN_TILE):
        out[:, column : column + COLUMN_TILE] = x[rows, column : column + COLUMN_TILE]
    return out


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


def _shaped_rows(logits: np.ndarray, params: SamplingParams, columns_ok: bool = False) -> np.ndarray:
    """`_rows`, then the logit shaping when ``params`` asks for it.

    The shaping makes a new array: the caller's logits are never written.
    """
    x = _rows(logits, columns_ok and not _shaping.present(params))
    if _shaping.present(params):
        x = _shaping.shape(x, params, logits.shape[:-1], np)
    return x


def _tempered_into(out: np.ndarray, x: np.ndarray, rows: np.ndarray, row_max: np.ndarray,
                   temperature: np.ndarray) -> np.ndarray:
    """`_tempered` of ``x[rows]``, written into ``out`` (no allocation; the same arithmetic)."""
    _subtract_rows(x, rows, row_max, out=out)
    out /= np.where(temperature == 0, 1, temperature).astype(x.dtype)[:, None]
    return out


def tempered_at(x: np.ndarray, rows: np.ndarray, ids: np.ndarray, row_max: np.ndarray,
                temperature: np.ndarray) -> np.ndarray:
    """The tempered logits of the tokens ``ids`` (R, W) of ``rows`` (R,), by `_tempered`'s arithmetic.

    ``row_max`` and ``temperature`` are those of ``rows``.
    """
    z = x[rows[:, None], ids] - row_max[:, None]
    z /= np.where(temperature == 0, 1, temperature).astype(x.dtype)[:, None]
    return z


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
        _take_rows(x, rows, out)
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


def block_sums(weight: np.ndarray, block: int) -> np.ndarray:
    """Sums of each row's consecutive blocks of ``block`` weights (a short last block too), float64.

    Each block is summed in the weights' precision (pairwise), the sums returned in float64.
    """
    n_rows, vocab = weight.shape
    full = vocab // block
    sums = [weight[:, : full * block].reshape(n_rows, full, block).sum(axis=-1)] if full else []
    if vocab % block:
        sums.append(weight[:, full * block :].sum(axis=-1, keepdims=True))
    return np.concatenate(sums, axis=1).astype(np.float64)


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
