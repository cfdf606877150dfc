"""Log-probabilities on NumPy (private to the NumPy backend), on the pipeline's kept sets.

One exponential pass over the rows (two for raw log-probabilities at a temperature), fused with
the rank count so that each row is read from memory once; the top-n from the kept sets, or from
the blocks with the largest maxima.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends._numpy_pipeline import BLOCK
from agnostic_sampling.backends._numpy_pipeline import GROWTH
from agnostic_sampling.backends._numpy_pipeline import _block_maxima
from agnostic_sampling.backends._numpy_pipeline import _Candidates
from agnostic_sampling.backends._numpy_pipeline import _choose_blocks
from agnostic_sampling.backends._numpy_pipeline import _gather
from agnostic_sampling.backends._numpy_pipeline import _pipeline
from agnostic_sampling.backends._numpy_pipeline import _Rows
from agnostic_sampling.backends._numpy_pipeline import candidates
from agnostic_sampling.backends._numpy_rows import _compact
from agnostic_sampling.backends._numpy_rows import _row_chunks
from agnostic_sampling.backends._numpy_rows import _rows
from agnostic_sampling.backends._numpy_rows import _shaped_rows
from agnostic_sampling.backends._numpy_rows import _subtract_rows


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


def kept_logprobs(logits: np.ndarray, ids: Any, params: SamplingParams, kind: str,  # noqa: C901
             top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """``(token, rank, top_ids, top_logprobs, kept_log_mass, kept_count)`` and the row status.

    Log-probabilities are ``z - log(sum(exp(z)))`` over the distribution's support, in the
    compute precision; the kept sets are `_pipeline`'s (a group's candidates at or above its cut).
    The shaping applies to the processed kind (the public function refuses it with ``"raw"``).
    """
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
    # A group of whole rows holds no candidates: its rows' tempered logits, recomputed.
    groups = [_Candidates(g.rows, *candidates(x, g, row_max, prm.temperature), g.cut) for g in kept.groups]
    for group in groups:
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
        for group in (g for g in groups if g.rows.size):
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
