"""Wide nuclei without sorting whole rows (private to the NumPy backend).

A top-p row whose nucleus reaches past the pipeline's candidate blocks (a flat distribution:
tens of thousands of tokens) was found by sorting the whole row. Here the row is not sorted;
its nucleus boundary is located from a sample and then proven:

1. A strided sample of the tempered row (every ``stride``-th token, about `SAMPLE` of them and
   at most every `MIN_STRIDE`-th, sorted) estimates the mass below each sample value, with its
   standard error. The mass *below* the boundary (``1 - p`` of the row) is made of many small
   terms, so the estimate is tight where the mass above, dominated by a few large tokens, would
   not be.
2. Two sample values, ``lo`` and ``hi``, bracket the estimated boundary by `SIGMAS` standard
   errors. One pass over the row takes the tokens with ``lo <= z <= hi`` (the *band*) and the
   exact mass ``M(z >= lo)``; the mass above the band is ``M(z > hi) = M(z >= lo) - M(band)``.
3. The bracket holds the boundary iff ``M(z > hi) < p * total <= M(z >= lo)``. Then every token
   above the band is kept, none below it, and sorting the band alone (a few thousand tokens)
   decides the rest, by the pipeline's rule: a token is kept iff the mass of the tokens before it
   in decreasing order is below ``p * total`` (ties with a kept token kept too).

A row whose bracket misses (a sample that misleads, e.g. values periodic in the stride) is
reported, and the caller sorts it as before. The weights are the float32 ``exp(z)`` the whole-row
sort uses, and every mass is summed in float64, as there: float32 sums (relative error ~1e-7)
moved the boundary of p = 0.999 nuclei by a token in an ad hoc fuzz.
"""

from __future__ import annotations

import numpy as np

from agnostic_sampling.backends._numpy_rows import CHUNK
from agnostic_sampling.backends._numpy_rows import _compact
from agnostic_sampling.backends._numpy_rows import _rows_at_hand
from agnostic_sampling.backends._numpy_rows import _tempered_into
from agnostic_sampling.backends._numpy_rows import block_sums

SAMPLE = 4096  # about this many sampled tokens per row
MIN_STRIDE = 8  # a shorter row is still sampled sparsely: a sample sort costs little beside the row
SIGMAS = 4.0  # half-width of the bracket in standard errors of the estimated mass


def wide_nucleus(x: np.ndarray, rows: np.ndarray, row_max: np.ndarray, temperature: np.ndarray,
                 top_p: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-p cut of whole rows ``rows`` of ``x`` (top-p the only truncation, ``min_keep`` 1).

    Returns ``(cut, found, block_weight)``: each row's smallest kept tempered logit, which rows
    the bracket proved (the cut of the others is meaningless), and the sums of the kept weights
    over blocks of ``block`` tokens. The tempered rows are not kept: a chunk of rows at a time
    lives in two reused buffers, and the draw recomputes the block it picks from ``x``.
    """
    source, at = _rows_at_hand(x, rows)
    n_rows, vocab = rows.size, x.shape[1]
    cut = np.full(n_rows, -np.inf, x.dtype)
    found = np.zeros(n_rows, bool)
    block_weight = np.zeros((n_rows, -(-vocab // block)))
    step = max(1, CHUNK // vocab)
    tempered = np.empty((min(step, n_rows), vocab), x.dtype)  # both reused by every chunk
    weight = np.empty_like(tempered)
    for start in range(0, n_rows, step):
        part = slice(start, start + step)
        zc = _tempered_into(tempered[: at[part].size], source, at[part], row_max[part], temperature[part])
        wc = np.exp(zc, out=weight[: zc.shape[0]])
        total = wc.sum(axis=-1, dtype=np.float64)
        bound = top_p[part].astype(np.float64) * total
        lo, hi = _bracket(zc, total - bound)
        cut[part], found[part] = _band_cut(zc, wc, lo, hi, bound)
        np.multiply(wc, zc >= cut[part, None], out=wc)  # the kept weights, as the draw computes them
        block_weight[part] = block_sums(wc, block)
    return cut, found, block_weight


def _bracket(z: np.ndarray, below: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values ``lo <= hi`` per row between which the mass of the tokens under them reaches ``below``.

    From the sorted strided sample: the estimated mass under the ``j``-th sample value is
    ``stride * C_j`` (``C_j`` the sample's cumulative weight), with standard error about
    ``stride * sqrt(Q_j)`` (``Q_j`` the cumulative squared weight).
    """
    stride = max(MIN_STRIDE, z.shape[1] // SAMPLE)
    sample = np.sort(z[:, ::stride], axis=-1)
    w = np.exp(sample.astype(np.float64))
    estimate = stride * np.cumsum(w, axis=-1)
    error = SIGMAS * stride * np.sqrt(np.cumsum(w * w, axis=-1))
    size = sample.shape[1]
    j_lo = (estimate + error <= below[:, None]).sum(axis=-1) - 2  # surely under the boundary
    j_hi = (estimate - error <= below[:, None]).sum(axis=-1) + 1  # surely over it

    def value(j: np.ndarray, past_the_sample: float) -> np.ndarray:
        picked = np.take_along_axis(sample, np.clip(j, 0, size - 1)[:, None], -1)[:, 0]
        return np.where((j >= 0) & (j < size), picked, past_the_sample)

    lowest = np.finfo(z.dtype).min  # never -inf: masked tokens stay out of the band
    return np.maximum(value(j_lo, lowest), lowest).astype(z.dtype), value(j_hi, np.inf).astype(z.dtype)


def _band_cut(z: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cut of each row from its band ``lo <= z <= hi``, and whether the band holds it.

    Overwrites ``w`` (it becomes the weights of the tokens at or above ``lo``).
    """
    at_least = z >= lo[:, None]
    # Each row's band, sorted decreasingly, in one (rows, widest band) array; -inf pads the end.
    _, values = _compact(at_least & (z <= hi[:, None]), z)
    values = -np.sort(-values, axis=-1)  # decreasing, and contiguous for the exponential
    weights = np.exp(values).astype(np.float64)  # the same float32 exp as the row's weights
    np.multiply(w, at_least, out=w)
    mass_from_lo = w.sum(axis=-1, dtype=np.float64)
    mass_above = mass_from_lo - weights.sum(axis=-1)
    found = (mass_above < bound) & (mass_from_lo >= bound)
    before = np.empty(weights.shape)  # the mass of the tokens before each position
    before[:, 0] = mass_above
    before[:, 1:] = mass_above[:, None] + np.cumsum(weights[:, :-1], axis=-1)
    counts = np.isfinite(values).sum(axis=-1)  # the band is finite (lo is): padding is -inf
    kept = np.minimum((before < bound[:, None]).sum(axis=-1), counts)  # before never decreases
    cut = np.take_along_axis(values, np.maximum(kept - 1, 0)[:, None], -1)[:, 0]
    return np.where(found, cut, -np.inf).astype(z.dtype), found
