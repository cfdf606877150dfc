"""One token per row by inverse CDF in token order, and the first index of a row's maximum.

Private to the JAX backend. One float32 uniform ``u`` per row from the caller's key (`_uniform`; not noise for
the whole vocabulary), then the token where the running mass of the kept weights ``exp(z)`` crosses ``u``
times their total (`_draw`): block sums in one fused pass, a bisection on the block prefixes, the last steps
inside one gathered block. A token outside the kept set is never returned, whatever ``u``. Under vocabulary
sharding the walk moves per-row scalars and one block per row.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import uniforms
from agnostic_sampling.backends._jax_common import _block_width
from agnostic_sampling.backends._jax_common import _count

# --------------------------------------------------------------------------------------------
# Inverse-CDF draws


def _uniform(key: jax.Array, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """One uniform in ``[0, 1)`` per row: one stream for the batch, or one per row's own key.

    A row of a batch drawn with one key of its own gets exactly what that key gives a batch of
    one row, so per-row keys make draws batch-invariant. A `Seed`'s words give each row its own
    float32 uniform, the NumPy backend's bit for bit.
    """
    if isinstance(key, SeedWords):
        return uniforms(key, batch_shape, jnp).reshape(-1).astype(dtype)
    rows = int(np.prod(batch_shape))
    if key.shape == ():
        return jax.random.uniform(key, (rows,), dtype)
    if key.shape != tuple(batch_shape):
        raise ValueError(
            f"key must be one key or one key per row (shape {tuple(batch_shape)}), got key shape {key.shape}"
        )
    return jax.vmap(lambda k: jax.random.uniform(k, (1,), dtype)[0])(key.reshape(-1))


_TOP_LEVEL = 1024  # the pyramid is halved while a level stays at least this wide


def _levels(weight: jax.Array) -> list[jax.Array]:
    """A pyramid of sums of adjacent pairs over ``weight``.

    Halved while the width is even and the next level stays at least ``_TOP_LEVEL`` wide. Adjacent
    pairs, so that a vocabulary split evenly over devices stays split and each device sums its own
    pairs.
    """
    levels = [weight]
    while levels[-1].shape[1] % 2 == 0 and levels[-1].shape[1] // 2 >= _TOP_LEVEL:
        pairs = levels[-1].reshape(weight.shape[0], -1, 2)
        levels.append(pairs[:, :, 0] + pairs[:, :, 1])  # faster on CPU than a sum over the pair axis
    return levels


def _snap(weight: jax.Array, found: jax.Array) -> jax.Array:
    """``found`` where its weight is positive, else the nearest positive index.

    The nearest is the largest positive index below, else the smallest above; -1 for a row with no
    positive weight. One reduction: indices above ``found`` are ranked below every index at or
    under it.
    """
    vocab = weight.shape[1]
    index_dtype = jnp.float32 if vocab < 2**24 else jnp.int32
    iota = lax.broadcasted_iota(jnp.int32, weight.shape, 1)
    position = iota.astype(index_dtype)
    rank = jnp.where(iota <= found[:, None], position, -position)
    best = jnp.max(jnp.where(weight > 0, rank, jnp.asarray(-vocab, index_dtype)), axis=-1)
    return jnp.where(best == -vocab, -1, jnp.where(best >= 0, best, -best).astype(jnp.int32))


def _inverse_cdf(weight: jax.Array, u: jax.Array) -> jax.Array:
    """One draw per row with probability ``weight / sum(weight)``, by inverse CDF.

    -1 for a row of zero weight; never a token of zero weight, whatever ``u`` in ``[0, 1]``.

    Reductions to per-row scalars only, so a vocabulary sharded over devices moves per-row scalars:

    1. a pyramid of pairwise sums (`_levels`);
    2. a bisection on the index of its narrow top level: ``prefix(m)``, the masked sum of the
       blocks before ``m``, one reduction per step, finds the block ``i`` with ``prefix(i) <=
       u * total < prefix(i + 1)``;
    3. one step down per level: the masked sum of the chosen block's left half decides between
       its halves;
    4. a snap (`_snap`): rounding can leave the walk on a token of zero weight (``u * total``
       rounding to the total, or a right half whose weight is all rounding); then the nearest
       positive token is taken instead, an event of probability at the float rounding level.

    About four passes over the weights, against ``log2 V`` for a bisection on the whole row.
    """
    levels = _levels(weight)
    top = levels[-1]
    rows, width = top.shape
    target = u * jnp.sum(top, axis=-1)
    iota = lax.broadcasted_iota(jnp.int32, top.shape, 1)

    def body(_: Any, bracket: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        lo, hi, before = bracket
        mid = lo + (hi - lo) // 2
        prefix = jnp.sum(jnp.where(iota < mid[:, None], top, 0), axis=-1)
        go_up = prefix <= target
        return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid), jnp.where(go_up, prefix, before)

    steps = int(np.ceil(np.log2(width))) if width > 1 else 0
    start = (jnp.zeros(rows, jnp.int32), jnp.full(rows, width, jnp.int32), jnp.zeros(rows, top.dtype))
    block, _, before = lax.fori_loop(0, steps, body, start)
    for level in reversed(levels[:-1]):
        left_halves = level.reshape(rows, -1, 2)[:, :, 0]
        iota = lax.broadcasted_iota(jnp.int32, left_halves.shape, 1)
        left = jnp.sum(jnp.where(iota == block[:, None], left_halves, 0), axis=-1)
        go_right = before + left <= target
        block = 2 * block + go_right
        before = jnp.where(go_right, before + left, before)
    return _snap(weight, block)


def _draw(z: jax.Array, u: jax.Array) -> jax.Array:
    """One draw per row with probability ``exp(z) / sum(exp(z))``, by inverse CDF in token order.

    ``z <= 0``, -inf outside the kept set; -1 for a row with no finite ``z``. Never a token of
    zero weight, whatever ``u`` in ``[0, 1]``.

    With `_block_width` blocks: one fused pass sums the weights of each block, a bisection on the
    block prefix sums (per-row scalars) picks the block holding ``u * total``, and the walk finishes
    inside that block's tokens, gathered (under vocabulary sharding, one block per row moves).
    Rounding can leave either walk on a zero weight; then the nearest positive block or token is
    taken (`_snap`), an event of probability at the float rounding level. Without blocks, the
    pyramid walk of `_inverse_cdf`.
    """
    rows, width = z.shape
    block = _block_width(width)
    if not block:
        return _inverse_cdf(jnp.exp(z), u)
    blocks = z.reshape(rows, -1, block)
    sums = jnp.sum(jnp.exp(blocks), axis=-1)  # (N, B); the weights are never materialised
    target = u * jnp.sum(sums, axis=-1)
    iota = lax.broadcasted_iota(jnp.int32, sums.shape, 1)

    def prefix(m: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(iota < m[:, None], sums, 0), axis=-1)

    def body(_: Any, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bracket
        mid = lo + (hi - lo) // 2
        go_up = prefix(mid) <= target
        return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

    count = sums.shape[1]
    steps = int(np.ceil(np.log2(count))) if count > 1 else 0
    found, _ = lax.fori_loop(0, steps, body, (jnp.zeros(rows, jnp.int32), jnp.full(rows, count, jnp.int32)))
    chosen = _snap(sums, found)  # -1: no weight in the row
    at = jnp.maximum(chosen, 0)
    inner = jnp.take_along_axis(blocks, at[:, None, None], axis=1)[:, 0, :]
    weight = jnp.exp(inner)
    running = prefix(at)[:, None] + jnp.cumsum(weight, axis=-1)
    step = jnp.minimum(_count(running <= target[:, None]).astype(jnp.int32), block - 1)
    token = at * block + _snap(weight, step)
    return jnp.where(chosen < 0, -1, token)


# --------------------------------------------------------------------------------------------
# The first index of a row's maximum (greedy)


def _index_of_first(hit: jax.Array) -> jax.Array:
    """First column where ``hit`` is True (V where none), as a min reduction in float32.

    Float32 because XLA vectorises floating-point reductions on CPU; exact below 2**24.
    """
    vocab = hit.shape[-1]
    dtype = jnp.float32 if vocab < 2**24 else jnp.int32
    iota = lax.broadcasted_iota(dtype, hit.shape, hit.ndim - 1)
    return jnp.min(jnp.where(hit, iota, jnp.asarray(vocab, dtype)), axis=-1).astype(jnp.int32)


def _first_in_blocks(x: jax.Array, block_max: jax.Array, row_max: jax.Array) -> jax.Array:
    """First index of ``row_max`` in each row of ``x`` (N, V), given the maxima of its blocks.

    ``block_max`` is (N, V / block): the first block whose maximum is the row's, then that block's
    tokens, gathered. ``x`` and ``block_max`` are NaN-free or NaN never equals ``row_max``.
    """
    rows, vocab = x.shape
    count = block_max.shape[1]
    block = vocab // count
    iota = lax.broadcasted_iota(jnp.float32, block_max.shape, 1)
    first_block = jnp.min(jnp.where(block_max == row_max[:, None], iota, count - 1), axis=-1)
    first_block = first_block.astype(jnp.int32)
    inner = jnp.take_along_axis(x.reshape(rows, count, block), first_block[:, None, None], axis=1)[:, 0]
    return first_block * block + jnp.minimum(_index_of_first(inner == row_max[:, None]), block - 1)


def _uniform_grid(key: jax.Array, batch: int, positions: int) -> jax.Array:
    """``(batch, positions)`` uniforms: from one key, or ``positions`` from each row's own key."""
    if key.shape == ():
        return jax.random.uniform(key, (batch, positions))
    if key.shape != (batch,):
        raise ValueError(f"key must be one key or one key per row (shape ({batch},)), "
                         f"got key shape {key.shape}")
    return jax.vmap(lambda k: jax.random.uniform(k, (positions,)))(key)
