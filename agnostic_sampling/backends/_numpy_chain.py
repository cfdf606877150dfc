"""Chains in any order on NumPy (private to the NumPy backend).

Whole rows, or for a chain that starts with top-k its leading top-k set, found in the blocks
with the largest maxima.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._chain import Chain
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import _chain
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._numpy_pipeline import BLOCK
from agnostic_sampling.backends._numpy_pipeline import _block_maxima
from agnostic_sampling.backends._numpy_pipeline import _choose_blocks
from agnostic_sampling.backends._numpy_pipeline import _gather
from agnostic_sampling.backends._numpy_pipeline import _status
from agnostic_sampling.backends._numpy_rows import _rows


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
