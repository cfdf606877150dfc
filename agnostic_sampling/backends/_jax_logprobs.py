"""Log-probabilities on JAX (private to the JAX backend), without sorting the vocabulary.

The kept set of `process_logits`, its mass and count and the rank from the threshold's
candidates where they hold them, else from whole rows (`_row_totals`); the top-n from the blocks
of 32 with the largest maxima (`_top_n`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._jax_common import _cleaned
from agnostic_sampling.backends._jax_common import _count
from agnostic_sampling.backends._jax_common import _Prepared
from agnostic_sampling.backends._jax_common import _Steps
from agnostic_sampling.backends._jax_common import _tempered
from agnostic_sampling.backends._jax_pipeline import _first_of_max
from agnostic_sampling.backends._jax_pipeline import _prepare
from agnostic_sampling.backends._jax_pipeline import _process
from agnostic_sampling.backends._jax_pipeline import _row_threshold
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCK
from agnostic_sampling.backends._jax_search import _candidate_block
from agnostic_sampling.backends._jax_search import _row_sums
from agnostic_sampling.backends._jax_strategies import SEARCHES

# A `lax.top_k` over the whole row sorts it on XLA:CPU (16 ms at 64 x 128256 on raw values, 65 ms
# on processed ones, mostly -inf), against 2 for the blocks. Whole rows are rebuilt from the
# logits wherever they are read, never passed on as (N, V) arrays: XLA:CPU writes out an (N, V)
# array that a `lax.cond` or a gather takes, and reads it back, a pass of its own.

_TOP_HEAD = 2  # `_top_n` fills -inf entries from the first _TOP_HEAD * n ids


def _top_n(value_at: Any, raw: jax.Array, clean: Any, block_max: jax.Array | None, greedy: jax.Array,
           n: int) -> tuple[jax.Array, jax.Array]:
    """The ``n`` largest ``value_at(logits, ids)`` per row, descending, ties by smaller id.

    As ``lax.top_k`` over the whole row would give them. ``value_at(logits, ids)`` maps cleaned logits
    ``x = clean(raw)`` and their token ids (R, W) to the ranked values, element-wise (``clean`` is
    element-wise too, applied to gathered or sliced ``raw``); outside ``greedy`` rows it depends on the
    logit alone, monotone non-decreasing. ``block_max`` holds the maxima of blocks of ``x``. Every token
    outside the ``2 n + 1`` blocks with the largest maxima is at most ``t``, their smallest maximum, so the
    gathered values above ``f(t)`` are all of the row's: ``n`` of them settle the row. Fewer settle it too
    when ``f(t)`` is ``-inf`` (a greedy row: its one kept token gathered), since every other value is then
    ``-inf``: the rest is the smallest ids among the row's first ``2 n`` whose value is ``-inf``. Other rows
    (ties or rounding at ``f(t)``) take the whole row, under a ``lax.cond`` that runs only when some row needs
    it.
    """
    rows, vocab = raw.shape

    def whole() -> tuple[jax.Array, jax.Array]:
        return lax.top_k(value_at(clean(raw), lax.broadcasted_iota(jnp.int32, raw.shape, 1)), n)

    m = 2 * n + 1
    if block_max is None or 4 * m > block_max.shape[1]:
        return whole()
    block = vocab // block_max.shape[1]
    maxima, chosen = lax.top_k(block_max, m)
    # The smallest maximum by a reduction (a slice of it makes XLA:CPU sort: `_candidates`).
    smallest = jnp.min(maxima, axis=-1, keepdims=True)
    chosen = jnp.sort(chosen, axis=-1)  # ids increase along the gathered row: top_k's ties by id
    logits = clean(jnp.take_along_axis(raw.reshape(rows, -1, block), chosen[:, :, None], axis=1)
                   .reshape(rows, -1))
    ids = (chosen[:, :, None] * block + jnp.arange(block, dtype=jnp.int32)).reshape(rows, -1)
    values = value_at(logits, ids)
    bound = jnp.where(greedy, -jnp.inf, value_at(smallest.astype(logits.dtype), ids[:, :1])[:, 0])
    above = values > bound[:, None]
    n_above = _count(above).astype(jnp.int32)
    top_values, at = lax.top_k(jnp.where(above, values, -jnp.inf), n)
    top_ids = jnp.take_along_axis(ids, at, axis=-1)

    head = min(_TOP_HEAD * n, vocab)
    head_ids = lax.broadcasted_iota(jnp.int32, (rows, head), 1)
    free = value_at(clean(raw[:, :head]), head_ids) == -jnp.inf
    _, fill = lax.top_k(jnp.where(free, -head_ids.astype(jnp.float32), -jnp.inf), n)  # ascending
    slot = jnp.arange(n, dtype=jnp.int32)[None, :]
    listed = slot < n_above[:, None]
    later = jnp.take_along_axis(fill, jnp.maximum(slot - n_above[:, None], 0), axis=-1)
    top_ids = jnp.where(listed, top_ids, later)
    top_values = jnp.where(listed, top_values, -jnp.inf)
    settled = (n_above >= n) | ((bound == -jnp.inf) & ~greedy) | (greedy & (n_above == 1))

    def mixed() -> tuple[jax.Array, jax.Array]:
        all_values, all_ids = whole()
        return (jnp.where(settled[:, None], top_values, all_values),
                jnp.where(settled[:, None], top_ids, all_ids))

    return lax.cond(jnp.all(settled), lambda: (top_values, top_ids), mixed)


def _row_totals(prep: _Prepared, steps: _Steps, cand: Any, threshold: jax.Array | None, kept_at: Any,
                chosen: jax.Array) -> tuple[jax.Array, ...]:
    """Per row: the total mass, the kept mass and count, the logits above ``chosen``, kept set found.

    ``chosen`` is (N, 1) cleaned logits; the last field says whether the row's kept set was found
    among the candidates ``cand`` (None: no candidates, every row whole). Where the threshold is
    above ``cand.bound``, every token outside the candidates is below it, so the kept set is among
    them (and a finite token, the bound, is not kept): its mass and count need no pass over the
    row. The count above ``chosen`` likewise wherever ``chosen`` is at least ``cand.x_bound``. The
    other rows take whole rows, under a ``lax.cond`` that runs only when some row needs them. The
    total mass is one pass of its own: ``exp`` in a fused multi-output reduction runs scalar on
    XLA:CPU, several times the cost of separate passes.
    """
    vocab = prep.raw.shape[1]

    def rows() -> tuple[jax.Array, jax.Array]:
        """The cleaned and the tempered rows (element-wise, fused into each pass that reads them).

        Behind an optimization barrier: XLA would otherwise share them with the same expression in
        the threshold's whole-row branch, writing them out as an (N, V) array for the ``lax.cond``
        (measured: the threshold and the total together cost 35 ms at 64 x 128256, 20 ms apart).
        """
        x = _cleaned(lax.optimization_barrier(prep.raw), prep.posinf, prep.row_max.dtype)
        return x, _tempered(x, prep.shift, prep.rows.temperature, steps)

    def whole_kept() -> tuple[jax.Array, jax.Array]:
        """The kept mass and count over whole rows.

        The same reduction over the same shape as the total, which adds in the same order: a row
        that keeps every token gets the same two totals, a log mass of 0.
        """
        _, z = rows()
        kept = kept_at(z, lax.broadcasted_iota(jnp.int32, z.shape, 1))
        return jnp.sum(jnp.where(kept, jnp.exp(z), 0), axis=-1), _count(kept)

    def whole_rank() -> tuple[jax.Array]:
        x, _ = rows()
        return (_row_sums([(x > chosen).astype(jnp.float32 if vocab < 2**24 else jnp.int32)])[:, 0],)

    def unless(inside: jax.Array, mine: tuple[jax.Array, ...], whole: Any) -> tuple[jax.Array, ...]:
        """``mine`` on the rows ``inside``, ``whole()`` on the others."""
        def mixed() -> tuple[jax.Array, ...]:
            return tuple(jnp.where(inside, a, b) for a, b in zip(mine, whole(), strict=True))
        return lax.cond(jnp.all(inside), lambda: mine, mixed)

    total = jnp.sum(jnp.exp(rows()[1]), axis=-1)
    if cand is None:
        return (total, *whole_kept(), *whole_rank(), jnp.zeros(total.shape, bool))
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    inside = ~greedy & (threshold > cand.bound)
    kept = cand.z >= threshold[:, None]
    kept_total, kept_count = unless(inside, (jnp.sum(jnp.where(kept, jnp.exp(cand.z), 0), axis=-1),
                                             _count(kept)), whole_kept)
    (n_larger,) = unless(chosen[:, 0] >= cand.x_bound, (_count(cand.x > chosen),), whole_rank)
    return total, kept_total, kept_count, n_larger, inside


@functools.partial(jax.jit, static_argnames=("steps", "kind", "top_n"))
def _logprobs(logits: jax.Array, ids: jax.Array, params: SamplingParams, steps: _Steps, kind: str,
              top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    prep = _prepare(logits, params, steps)
    dtype = prep.row_max.dtype
    n_rows, vocab = prep.raw.shape
    truncating = steps.top_k or steps.top_p or steps.min_p
    threshold, cand = _row_threshold(prep, steps) if truncating else (None, None)
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    first = _first_of_max(prep)

    def clean(raw: jax.Array) -> jax.Array:
        return _cleaned(raw, prep.posinf, dtype)

    def kept_at(z: jax.Array, index: jax.Array) -> jax.Array:
        """Whether tempered logits ``z`` at token ids ``index`` (R, W) are in the kept set."""
        kept = z > -jnp.inf
        if truncating:
            kept &= z >= threshold[:, None]
        return jnp.where(greedy[:, None], index == first[:, None], kept)  # a greedy row's z is x - max

    ids = ids.reshape(-1)
    valid = (ids >= 0) & (ids < vocab)
    at = jnp.clip(ids, 0, vocab - 1).astype(jnp.int32)[:, None]
    chosen = clean(jnp.take_along_axis(prep.raw, at, axis=-1))
    total, kept_total, kept_count, n_larger, inside = _row_totals(prep, steps, cand, threshold, kept_at,
                                                                  chosen)
    raw_untempered = kind == "raw" and steps.temperature

    def log_of(mass: jax.Array) -> jax.Array:  # a row with no finite logit has mass 0: log-probs -inf
        return jnp.log(jnp.where(mass > 0, mass, 1))

    truncated = ~greedy & (inside | (kept_total < total))
    kept_log_mass = jnp.where(truncated, jnp.minimum(log_of(kept_total) - log_of(total), 0), 0)
    if kind == "raw":
        x = clean(lax.optimization_barrier(prep.raw))  # not shared with other passes: see `_row_totals`
        log_raw = log_of(jnp.sum(jnp.exp(x - prep.shift[:, None]), axis=-1) if raw_untempered else total)
    else:
        log_kept = log_of(kept_total)

    def value_at(x: jax.Array, index: jax.Array) -> jax.Array:
        """The log-probabilities of cleaned logits ``x`` at token ids ``index`` (R, W).

        Element-wise, as over the whole row.
        """
        if kind == "raw":
            return (x - prep.shift[:, None]) - log_raw[:, None]
        z = _tempered(x, prep.shift, prep.rows.temperature, steps)
        return jnp.where(kept_at(z, index), z - log_kept[:, None], -jnp.inf)

    token = jnp.where(valid, value_at(chosen, at)[:, 0], jnp.nan)
    rank = jnp.where(valid, 1 + n_larger.astype(jnp.int32), 0)
    if top_n:
        block_max = prep.block_max
        if block_max is None and _candidate_block(vocab):  # no truncation step: the blocks' own pass
            block_max = jnp.max(clean(prep.raw).reshape(n_rows, -1, _CANDIDATE_BLOCK), axis=-1)
        top_logprobs, top_ids = _top_n(value_at, prep.raw, clean, block_max,
                                       greedy if kind == "processed" else jnp.zeros_like(greedy), top_n)
    else:
        top_logprobs, top_ids = jnp.zeros((n_rows, 0), dtype), jnp.zeros((n_rows, 0), jnp.int32)

    batch_shape = logits.shape[:-1]
    fields = (token.reshape(batch_shape), rank.reshape(batch_shape), top_ids.reshape(batch_shape + (top_n,)),
              top_logprobs.reshape(batch_shape + (top_n,)), kept_log_mass.reshape(batch_shape),
              kept_count.astype(jnp.int32).reshape(batch_shape))
    return fields, prep.status.reshape(batch_shape)


@functools.partial(jax.jit, static_argnames=("steps", "kind", "top_n"))
def _logprobs_refined(logits: jax.Array, ids: jax.Array, params: SamplingParams, steps: _Steps, kind: str,
                      top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """`logprobs` with the steps of `_strategies`: the pipeline's answer, then the refined rows."""
    plain = _strategies.without(params)
    fields, status = _logprobs(logits, ids, plain, steps, kind, top_n)
    z = _process(logits, plain, steps).z
    strategy = _strategies.rows(params, logits.shape[:-1], z.dtype, jnp, steps.min_keep)
    refined = _strategies.refine(z, strategy, SEARCHES, jnp)
    rows_first = [f.reshape(z.shape[0], *f.shape[logits.ndim - 1:]) for f in fields]
    adjusted = _strategies.adjust_logprobs(rows_first, z, refined, ids.reshape(-1), kind, jnp,
                                           lambda values: lax.top_k(values, top_n))
    return tuple(a.reshape(f.shape) for a, f in zip(adjusted, fields, strict=True)), status

