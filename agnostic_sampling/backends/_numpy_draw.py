"""Exact draws from the NumPy pipeline's kept sets (private to the NumPy backend).

Inverse CDF over a group's candidates, the two-part mixture of a dense row (`_numpy_pipeline`'s
docstring tells how), by blocks over whole rows, and in token order for a `Seed`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling.backends._numpy_mass import _outside_mass_fine
from agnostic_sampling.backends._numpy_mass import _without
from agnostic_sampling.backends._numpy_pipeline import BLOCK
from agnostic_sampling.backends._numpy_pipeline import DENSE_HEAD
from agnostic_sampling.backends._numpy_pipeline import WIDE
from agnostic_sampling.backends._numpy_pipeline import _Candidates
from agnostic_sampling.backends._numpy_pipeline import _head
from agnostic_sampling.backends._numpy_pipeline import _Kept
from agnostic_sampling.backends._numpy_pipeline import _Rows
from agnostic_sampling.backends._numpy_rows import _row_chunks
from agnostic_sampling.backends._numpy_rows import _rows_at_hand
from agnostic_sampling.backends._numpy_rows import _take_rows
from agnostic_sampling.backends._numpy_rows import _tempered
from agnostic_sampling.backends._numpy_rows import _tempered_into
from agnostic_sampling.backends._numpy_rows import block_sums
from agnostic_sampling.backends._numpy_rows import tempered_at


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
    source, at = _rows_at_hand(x, dense)
    if dense.size:
        work = np.empty((chunks[0].stop - chunks[0].start, x.shape[1]), x.dtype)
    for part in chunks:
        rows = dense[part]
        weight = _tempered_into(work[: rows.size], source, at[part], kept.row_max[rows],
                                prm.temperature[rows])
        ids[rows] = _draw_by_blocks(np.exp(weight, out=weight), u[rows])
    for group in kept.groups:
        index, logit = group.index, group.logit
        if index is not None and not np.all(index[:, 1:] > index[:, :-1]):
            order = np.argsort(index, axis=-1, kind="stable")
            group = _Candidates(group.rows, np.take_along_axis(index, order, -1),
                                np.take_along_axis(logit, order, -1), group.cut)
        ids[group.rows] = _draw_group(x, kept, prm.temperature, group, u[group.rows])
    return ids


def _pick(cumulative: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """First position whose cumulative weight exceeds ``target``, never a zero-weight position.

    A position of zero weight never exceeds a target that its predecessor did not; only rounding
    can push the target past the end, and then the last position of positive weight is taken.
    """
    position = (cumulative <= target[:, None]).sum(axis=-1)
    last_positive = weight.shape[1] - 1 - np.argmax(weight[:, ::-1] > 0, axis=-1)
    return np.minimum(position, last_positive)


def _draw_group(x: np.ndarray, kept: _Kept, temperature: np.ndarray, group: _Candidates,
                uniform: np.ndarray) -> np.ndarray:
    """Inverse CDF over a group's kept sets, one uniform per row; ``temperature`` is the batch's.

    A group of whole rows (no candidates held) recomputes only the block its uniform picks.
    """
    if group.index is not None:
        return _draw_candidates(group.index, group.logit, group.cut, uniform)
    rows, cut = group.rows, group.cut

    def weights_at(ids: np.ndarray) -> np.ndarray:
        z = tempered_at(x, rows, ids, kept.row_max[rows], temperature[rows])
        return np.exp(z) * (z >= cut[:, None])

    return _draw_from_block_sums(group.block_weight, weights_at, x.shape[1], uniform)


def _draw_candidates(index: np.ndarray, logit: np.ndarray, cut: np.ndarray,
                     uniform: np.ndarray) -> np.ndarray:
    """Inverse CDF over the candidates whose tempered logit is at least ``cut``."""
    if logit.shape[1] > WIDE:  # whole rows: block sums instead of a row-long cumulative sum
        position = np.empty(logit.shape[0], np.int64)
        chunks = _row_chunks(logit.shape[0], logit.shape[1])
        weight = np.empty((chunks[0].stop - chunks[0].start, logit.shape[1]), logit.dtype)  # reused
        for part in chunks:
            w = np.exp(logit[part], out=weight[: logit[part].shape[0]])
            np.multiply(w, logit[part] >= cut[part, None], out=w)
            position[part] = _draw_by_blocks(w, uniform[part])
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
    source, at = _rows_at_hand(x, rows[maybe_tail])
    for part in _row_chunks(maybe_tail.size, x.shape[1]):  # rare: the tail's exact weights decide
        some = maybe_tail[part]
        weight = _tempered(_take_rows(source, at[part]), row_max[some], temperature[some], in_place=True)
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
    def weights_at(index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(weight, index, -1)

    return _draw_from_block_sums(block_sums(weight, BLOCK), weights_at, weight.shape[1], uniform)


def _draw_from_block_sums(block_weight: np.ndarray, weights_at: Any, vocab: int,
                          uniform: np.ndarray) -> np.ndarray:
    """`_draw_by_blocks` from the rows' block sums; ``weights_at(ids)``: the weights at (R, BLOCK) ids."""
    block_cumulative = np.cumsum(block_weight, axis=-1)
    target = uniform * block_cumulative[:, -1]
    block = _pick(block_cumulative, target, block_weight)
    previous = np.take_along_axis(block_cumulative, np.maximum(block - 1, 0)[:, None], -1)[:, 0]
    before = np.where(block > 0, previous, 0.0)

    index = block[:, None] * BLOCK + np.arange(BLOCK)
    inside = index < vocab
    in_block = weights_at(np.minimum(index, vocab - 1)).astype(np.float64)
    in_block[~inside] = 0.0
    position = _pick(np.cumsum(in_block, axis=-1), target - before, in_block)
    return block * BLOCK + position
