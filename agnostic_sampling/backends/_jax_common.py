"""What the JAX backend's modules share (private).

Which steps a program contains, the per-row parameters, the prepared rows, cleaning and
tempering, and the width of fused blocks. Imports nothing else from the backend, so `jax.py`,
`_jax_search` and `_jax_draw` all import from here and never from each other upwards.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class _Steps(NamedTuple):
    """Which steps the compiled program contains (static; values stay traced)."""

    temperature: bool  # False when the temperature is concretely 1 everywhere: no division
    top_k: bool
    top_p: bool
    min_p: bool
    min_keep: bool  # False when min_keep is concretely 1 everywhere: v_n is the row maximum


class _Rows(NamedTuple):
    """Per-row parameters after the traced bad-value policy, each of shape (N,)."""

    greedy: jax.Array
    temperature: jax.Array  # 1 on greedy rows, so that dividing by it is harmless
    top_k: jax.Array  # int32, 0: off
    top_p: jax.Array  # 1: off
    min_p: jax.Array  # 0: off
    min_keep: jax.Array  # int32 >= 1


class _Prepared(NamedTuple):
    """The rows of one call, cleaned of NaN and +inf and ready for tempering (see `_cleaned`)."""

    raw: jax.Array  # (N, V) the logits as given (dtype too)
    rows: _Rows
    row_max: jax.Array  # (N,) maximum of the cleaned row; -inf for rows with no finite logit
    posinf: jax.Array  # (N,) the row holds +inf
    shift: jax.Array  # (N,) what is subtracted before tempering
    skip: jax.Array  # (N,) greedy rows and rows with no finite logit: no search
    status: jax.Array  # (N,) int8
    block_max: jax.Array | None  # (N, V / block) cleaned block maxima when candidates are used


def _cleaned(raw: jax.Array, posinf: jax.Array, dtype: Any) -> jax.Array:
    """The traced bad-value policy, element-wise.

    NaN -> -inf; a row holding +inf (``posinf``) keeps 0 at its +inf tokens and -inf elsewhere.
    """
    x = raw.astype(dtype)
    x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    return jnp.where(posinf[:, None], jnp.where(x == jnp.inf, 0, -jnp.inf).astype(dtype), x)


def _tempered(x: jax.Array, shift: jax.Array, temperature: jax.Array, steps: _Steps) -> jax.Array:
    """``(x - shift) / temperature`` per row, bit for bit the same at any shape."""
    z = x - shift[:, None]
    if steps.temperature:
        # XLA rewrites a division by a broadcast row value into a multiplication by its
        # reciprocal (off by an ulp). A divisor that is not a broadcast (plus a float zero made
        # from an iota, which XLA does not fold) keeps the true division, fused, so the kept sets
        # match the NumPy backend bit for bit, and candidates match the row.
        zero = lax.broadcasted_iota(z.dtype, x.shape, 1) * 0
        z = z / (temperature[:, None] + zero)
    return z


def _block_width(vocab: int) -> int:
    """Width of the blocks of the fused row reductions; 0 for plain reductions.

    The fused reductions are the search's sums, the draw's block sums and the NaN-aware maximum.
    The width is the largest power of two dividing ``vocab``, at most 128 and at most
    ``vocab / 64``; 0 when that is below 32 (then plain reductions, one per operand).

    A vocabulary split evenly over up to 64 devices (or any count whose shards are multiples of
    the block) keeps every block on one device; otherwise XLA gathers the per-device partial sums
    of a block, one scalar per row and device (still correct, just not reductions-only).
    """
    block = 1
    while vocab % (2 * block) == 0 and 2 * block <= min(128, vocab // 64):
        block *= 2
    return block if block >= 32 else 0


def _count(mask: jax.Array) -> jax.Array:
    """Number of True per row, summed in float32 (exact below 2**24 tokens)."""
    dtype = jnp.float32 if mask.shape[-1] < 2**24 else jnp.int32
    return jnp.sum(mask.astype(dtype), axis=-1)
