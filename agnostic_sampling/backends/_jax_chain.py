"""Chains in any order on JAX (private to the JAX backend).

Whole rows, or for a chain that starts with top-k the candidate blocks, with whole rows under a
`lax.cond` for batches where some row's top-k set reaches below the candidates.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from agnostic_sampling._chain import Chain
from agnostic_sampling.backends import _chain
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends._jax_common import _cleaned
from agnostic_sampling.backends._jax_draw import _draw
from agnostic_sampling.backends._jax_draw import _uniform
from agnostic_sampling.backends._jax_pipeline import _block_max_and_nan
from agnostic_sampling.backends._jax_pipeline import _compute_dtype
from agnostic_sampling.backends._jax_pipeline import _max_and_nan
from agnostic_sampling.backends._jax_pipeline import _Processed
from agnostic_sampling.backends._jax_pipeline import _status
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCK
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCKS
from agnostic_sampling.backends._jax_search import _candidate_block
from agnostic_sampling.backends._jax_strategies import SEARCHES


def _chain_raw(logits: jax.Array, chain: Chain, shaped: bool = True) -> jax.Array:
    """The rows ``(N, V)`` in compute precision, shaped when the call shapes."""
    raw = logits.reshape(-1, logits.shape[-1]).astype(_compute_dtype(logits.dtype))
    if shaped and chain.shaping is not None and _shaping.present(chain.shaping):  # static (None fields)
        raw = _shaping.shape(raw, chain.shaping, logits.shape[:-1], jnp)
    return raw


def _chain_rows(logits: jax.Array, chain: Chain, shaped: bool = True) -> tuple[jax.Array, jax.Array]:
    """The shaped, cleaned rows (the traced bad-value policy) and their status."""
    raw = _chain_raw(logits, chain, shaped)
    raw_max, has_nan = _max_and_nan(raw)
    return _cleaned(raw, raw_max == jnp.inf, raw.dtype), _status(raw_max, has_nan)


class _ChainCandidates(NamedTuple):
    z: jax.Array  # (N, C) the chain's result on the candidates
    exact: jax.Array  # (N,) whether that is the row's result
    chosen: jax.Array  # (N, M) the candidate blocks, ascending
    index: jax.Array  # (N, C) the candidates' token ids
    status: jax.Array  # (N,) the rows' status
    whole: Any  # () -> (N, V) the cleaned rows, for the rows that are not exact


def _chain_candidates(logits: jax.Array, chain: Chain, min_keep_on: bool) -> _ChainCandidates | None:
    """The chain on the `_CANDIDATE_BLOCKS` blocks with the largest maxima, when it starts with top-k.

    From the raw rows: one pass for the block maxima and the status, the cleaning on the
    candidates alone; whole rows only through ``whole``.
    """
    vocab = logits.shape[-1]
    block = _candidate_block(vocab)
    if not block or _chain.leading_top_k(chain) is None:
        return None
    raw = _chain_raw(logits, chain)
    rows = raw.shape[0]
    block_max, has_nan = _block_max_and_nan(raw, block)
    row_max = jnp.max(block_max, axis=-1)
    posinf = row_max == jnp.inf
    maxima, chosen = lax.top_k(block_max, _CANDIDATE_BLOCKS)
    chosen = jnp.sort(chosen, axis=-1)
    blocks = raw.reshape(rows, -1, block)
    values = _cleaned(jnp.take_along_axis(blocks, chosen[:, :, None], axis=1).reshape(rows, -1), posinf,
                      raw.dtype)
    bound = jnp.min(maxima, axis=-1)  # a reduction, not a slice: see `_candidates`
    bound = jnp.where(posinf, jnp.where(bound == jnp.inf, 0, -jnp.inf).astype(raw.dtype), bound)
    z, exact = _chain.run_candidates(values, bound, chain, logits.shape[:-1], SEARCHES, jnp, min_keep_on)
    index = (chosen[:, :, None] * block + jnp.arange(block, dtype=jnp.int32)).reshape(rows, -1)
    return _ChainCandidates(z, exact, chosen, index, _status(row_max, has_nan),
                            lambda: _cleaned(raw, posinf, raw.dtype))


@functools.partial(jax.jit, static_argnames=("min_keep_on", "only"))
def _process_chain(logits: jax.Array, chain: Chain, min_keep_on: bool,
                   only: tuple[str, ...] | None = None) -> _Processed:
    batch_shape = logits.shape[:-1]
    cand = None if only is not None else _chain_candidates(logits, chain, min_keep_on)
    if cand is None:
        x, status = _chain_rows(logits, chain)
        return _Processed(_chain.run(x, chain, batch_shape, SEARCHES, jnp, min_keep_on, only), status)
    rows, vocab = cand.z.shape[0], logits.shape[-1]

    def compact() -> jax.Array:
        out = jnp.full((rows, vocab // _CANDIDATE_BLOCK, _CANDIDATE_BLOCK), -jnp.inf, cand.z.dtype)
        row = jnp.arange(rows)[:, None]
        return out.at[row, cand.chosen].set(cand.z.reshape(rows, -1, _CANDIDATE_BLOCK)).reshape(rows, vocab)

    def mixed() -> jax.Array:
        whole = _chain.run(cand.whole(), chain, batch_shape, SEARCHES, jnp, min_keep_on)
        return jnp.where(cand.exact[:, None], compact(), whole)

    return _Processed(lax.cond(jnp.all(cand.exact), compact, mixed), cand.status)


@functools.partial(jax.jit, static_argnames="min_keep_on")
def _sample_chain(key: jax.Array, logits: jax.Array, chain: Chain,
                  min_keep_on: bool) -> tuple[jax.Array, jax.Array]:
    batch_shape = logits.shape[:-1]
    u = _uniform(key, batch_shape, _compute_dtype(logits.dtype))
    cand = _chain_candidates(logits, chain, min_keep_on)
    if cand is None:
        x, status = _chain_rows(logits, chain)
        ids = _draw(_chain.run(x, chain, batch_shape, SEARCHES, jnp, min_keep_on), u)
    else:
        at = _draw(cand.z, u)
        drawn = jnp.where(at >= 0, jnp.take_along_axis(cand.index, jnp.maximum(at, 0)[:, None], -1)[:, 0], -1)

        def mixed() -> jax.Array:
            whole = _draw(_chain.run(cand.whole(), chain, batch_shape, SEARCHES, jnp, min_keep_on), u)
            return jnp.where(cand.exact, drawn, whole)

        ids, status = lax.cond(jnp.all(cand.exact), lambda: drawn, mixed), cand.status
    return ids.reshape(batch_shape), status.reshape(batch_shape)


@functools.partial(jax.jit, static_argnames=("min_keep_on", "kind", "top_n"))
def _logprobs_chain(logits: jax.Array, ids: jax.Array, chain: Chain, min_keep_on: bool, kind: str,
                    top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    z, status = _process_chain(logits, chain, min_keep_on)
    tempered = _process_chain(logits, chain, min_keep_on, ("temperature",)).z
    x, _ = _chain_rows(logits, chain, shaped=kind == "processed")  # "raw": the logits as given
    fields = _chain.logprobs(x, z, tempered, ids.reshape(-1), kind, lambda values: lax.top_k(values, top_n),
                             jnp)
    batch_shape = logits.shape[:-1]
    top_shape = batch_shape + (top_n,)
    shapes = (batch_shape, batch_shape, top_shape, top_shape, batch_shape, batch_shape)
    fields = tuple(f.reshape(shape) for f, shape in zip(fields, shapes, strict=True))
    return (*fields[:5], fields[5].astype(jnp.int32)), status.reshape(batch_shape)
