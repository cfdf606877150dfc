"""The JAX pipeline's stages (private to the JAX backend).

Which steps a program contains (`_Steps`), the per-row parameters and status, the prepared
(shaped, cleaned, tempered) rows, each row's route to its threshold, and the processed rows.
`jax.py` jits them; `_jax_logprobs` and `_jax_chain` build on them.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._jax_common import _block_width
from agnostic_sampling.backends._jax_common import _cleaned
from agnostic_sampling.backends._jax_common import _Prepared
from agnostic_sampling.backends._jax_common import _Rows
from agnostic_sampling.backends._jax_common import _Steps
from agnostic_sampling.backends._jax_common import _tempered
from agnostic_sampling.backends._jax_draw import _first_in_blocks
from agnostic_sampling.backends._jax_draw import _index_of_first
from agnostic_sampling.backends._jax_search import _candidate_block
from agnostic_sampling.backends._jax_search import _candidate_threshold
from agnostic_sampling.backends._jax_search import _candidates
from agnostic_sampling.backends._jax_search import _for_rows
from agnostic_sampling.backends._jax_search import _take_rows
from agnostic_sampling.backends._jax_search import _threshold
from agnostic_sampling.backends._jax_strategies import SEARCHES

# --------------------------------------------------------------------------------------------
# Which steps a program contains: decided at trace time (`_Steps`)


def _maybe_on(value: Any, off: Any) -> bool:
    """False when ``value`` is None or concretely equal to ``off`` everywhere; True otherwise."""
    if value is None:
        return False
    if is_tracer(value):
        return True
    return not bool(np.all(np.asarray(value) == off))


def _steps(params: SamplingParams) -> _Steps:
    """The steps that ``params`` can turn on; a step off everywhere is left out of the program."""
    return _Steps(
        temperature=_maybe_on(params.temperature, OFF["temperature"]),
        top_k=_maybe_on(params.top_k, OFF["top_k"]),
        top_p=_maybe_on(params.top_p, OFF["top_p"]),
        min_p=_maybe_on(params.min_p, OFF["min_p"]),
        min_keep=_maybe_on(params.min_keep, OFF["min_keep"]),
    )


# --------------------------------------------------------------------------------------------
# Rows, parameters and status


def _compute_dtype(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32




def _per_row(params: SamplingParams, name: str, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    value = getattr(params, name)
    value = jnp.asarray(OFF[name] if value is None else value)
    if jnp.issubdtype(dtype, jnp.integer) and value.dtype != dtype and value.dtype.itemsize >= 4:
        # Clamp before the cast, which would wrap: any count past the vocabulary keeps every token.
        info = jnp.iinfo(dtype)
        if jnp.issubdtype(value.dtype, jnp.unsignedinteger):
            value = jnp.minimum(value, jnp.asarray(info.max, value.dtype))
        elif jnp.issubdtype(value.dtype, jnp.integer):
            value = jnp.clip(value, info.min, info.max)
        else:  # the largest float32 below 2**31: the float int32 max rounds up to would wrap
            value = jnp.clip(value, info.min, float(np.nextafter(np.float32(2**31), 0)))
    return jnp.broadcast_to(value.astype(dtype), batch_shape).reshape(-1)


def _rows_params(params: SamplingParams, batch_shape: tuple[int, ...], dtype: Any) -> _Rows:
    temperature = _per_row(params, "temperature", batch_shape, dtype)
    # Greedy also for NaN, < 0, inf, and below the smallest normal float32 (which XLA flushes to 0).
    greedy = ~(temperature >= np.finfo(np.float32).tiny) | ~jnp.isfinite(temperature)
    top_p = _per_row(params, "top_p", batch_shape, dtype)
    min_p = _per_row(params, "min_p", batch_shape, dtype)
    return _Rows(
        greedy=greedy,
        temperature=jnp.where(greedy, 1, temperature),
        top_k=jnp.maximum(_per_row(params, "top_k", batch_shape, jnp.int32), 0),
        top_p=jnp.where(jnp.isnan(top_p), 1, jnp.clip(top_p, 0, 1)),
        min_p=jnp.where(jnp.isnan(min_p), 0, jnp.clip(min_p, 0, 1)),
        min_keep=jnp.maximum(_per_row(params, "min_keep", batch_shape, jnp.int32), 1),
    )


def _max_and_nan(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's maximum ignoring NaN, and whether the row holds NaN.

    Not ``isnan(jnp.max(x))``: XLA:CPU's maximum propagates NaN on short rows but ignores it on
    long ones (there, an all-NaN row has maximum -inf). With `_block_width` blocks, one fused pass
    (a variadic reduce per block, then per-row reductions of the block results); otherwise two
    reductions.
    """
    vocab = x.shape[1]
    block = _block_width(vocab)
    if not block:
        nan = jnp.isnan(x)
        return jnp.max(jnp.where(nan, -jnp.inf, x), axis=-1), jnp.any(nan, axis=-1)
    block_max, has_nan = _block_max_and_nan(x, block)
    return jnp.max(block_max, axis=-1), has_nan


def _status(row_max: jax.Array, has_nan: jax.Array) -> jax.Array:
    """Per-row status from the maximum of the NaN-free row and whether the row held NaN."""
    return jnp.where(
        has_nan, ROW_NAN,
        jnp.where(row_max == jnp.inf, ROW_POSINF, jnp.where(row_max == -jnp.inf, ROW_NO_FINITE, ROW_OK)),
    ).astype(jnp.int8)


def _block_max_and_nan(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Maxima of blocks of ``block`` tokens ignoring NaN, and whether each row holds NaN.

    (N, V / block) and (N,), in one fused pass (see `_max_and_nan` on why NaN has its own flag).
    """
    rows, vocab = x.shape

    def combine(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return jnp.where(b[0] > a[0], b[0], a[0]), jnp.maximum(a[1], b[1])  # a NaN value never wins

    blocks = x.reshape(rows, -1, block)
    init = (jnp.asarray(-jnp.inf, x.dtype), jnp.float32(0))
    block_max, block_nan = lax.reduce((blocks, jnp.isnan(blocks).astype(jnp.float32)), init, combine, (2,))
    return block_max, jnp.max(block_nan, axis=-1) > 0


# --------------------------------------------------------------------------------------------
# The prepared rows, the route to each row's threshold, and the pipeline


def _prepare(logits: jax.Array, params: SamplingParams, steps: _Steps) -> _Prepared:
    dtype = _compute_dtype(logits.dtype)
    raw = logits.reshape(-1, logits.shape[-1])
    if _shaping.present(params):  # static: which shaping fields are None
        raw = _shaping.shape(raw.astype(dtype), params, logits.shape[:-1], jnp)
    block = _candidate_block(raw.shape[1]) if (steps.top_k or steps.top_p or steps.min_p) else 0
    if block:
        block_max, has_nan = _block_max_and_nan(raw.astype(dtype), block)
        raw_max = jnp.max(block_max, axis=-1)
    else:
        block_max = None
        raw_max, has_nan = _max_and_nan(raw.astype(dtype))
    posinf = raw_max == jnp.inf
    row_max = jnp.where(posinf, 0, raw_max).astype(dtype)
    if block_max is not None:
        block_max = jnp.where(posinf[:, None], jnp.where(block_max == jnp.inf, 0, -jnp.inf).astype(dtype),
                              block_max)
    rows = _rows_params(params, logits.shape[:-1], dtype)
    no_finite = row_max == -jnp.inf
    return _Prepared(raw, rows, row_max, posinf, jnp.where(no_finite, 0, row_max), rows.greedy | no_finite,
                     _status(raw_max, has_nan), block_max)


def _full_z(prep: _Prepared, steps: _Steps) -> jax.Array:
    """The whole rows, cleaned and tempered."""
    dtype = prep.row_max.dtype
    return _tempered(_cleaned(prep.raw, prep.posinf, dtype), prep.shift, prep.rows.temperature, steps)


def _row_threshold(prep: _Prepared, steps: _Steps, z: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Each row's exact threshold, and the candidates it came from (None without candidates).

    ``z`` is the whole rows when the caller has them; otherwise they are built only for the rows
    that need them.
    """
    rows, skip = prep.rows, prep.skip
    if prep.block_max is None:
        z = _full_z(prep, steps) if z is None else z
        return _threshold(z, jnp.exp(z) if steps.top_p else None, rows, steps, skip), None
    cand = _candidates(prep, steps)

    def row_mass() -> jax.Array:
        return jnp.sum(jnp.exp(_full_z(prep, steps) if z is None else z), axis=-1)

    threshold, exact = _candidate_threshold(cand, rows, steps, skip, row_mass)

    def whole_rows(index: jax.Array | None, active: jax.Array) -> jax.Array:
        sub = _take_rows(prep, index)
        full = _full_z(sub, steps) if z is None else (z if index is None else z[index])
        weight = jnp.exp(full) if steps.top_p else None
        below = cand.bound if index is None else cand.bound[index]  # right where the nucleus ran past them
        return _threshold(full, weight, sub.rows, steps, sub.skip | ~active, below)

    vocab = prep.raw.shape[1]
    return lax.cond(jnp.all(exact), lambda: threshold,
                    lambda: _for_rows(~exact, whole_rows, threshold, vocab)), cand


def _first_of_max(prep: _Prepared) -> jax.Array:
    """First index of each cleaned row's maximum, computed only when some row is greedy.

    Under vmap both branches run.
    """
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)

    def first() -> jax.Array:
        if prep.block_max is not None:
            x = _cleaned(prep.raw, prep.posinf, prep.row_max.dtype)
            return _first_in_blocks(x, prep.block_max, prep.row_max)
        x = prep.raw.astype(prep.row_max.dtype)
        # The cleaned maximum sits where the raw row equals its NaN-free maximum (+inf on +inf rows).
        raw_max = jnp.where(prep.posinf, jnp.inf, prep.row_max)
        return _index_of_first(x == raw_max[:, None])

    return lax.cond(jnp.any(greedy), first, lambda: jnp.zeros(prep.raw.shape[:1], jnp.int32))


class _Processed(NamedTuple):
    z: jax.Array  # (N, V) tempered logits, -inf outside the kept set
    status: jax.Array  # (N,) int8


def _process(logits: jax.Array, params: SamplingParams, steps: _Steps) -> _Processed:
    prep = _prepare(logits, params, steps)
    z = _full_z(prep, steps)
    if steps.top_k or steps.top_p or steps.min_p:
        threshold, _ = _row_threshold(prep, steps, z)
        z = jnp.where(z >= threshold[:, None], z, -jnp.inf)
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    one_hot = lax.broadcasted_iota(jnp.int32, z.shape, 1) == _first_of_max(prep)[:, None]
    z = jnp.where(greedy[:, None], jnp.where(one_hot, 0, -jnp.inf).astype(z.dtype), z)
    if _strategies.present(params):
        strategy = _strategies.rows(params, logits.shape[:-1], z.dtype, jnp, steps.min_keep)
        z = _strategies.refine(z, strategy, SEARCHES, jnp)
    return _Processed(z, prep.status)


def _softmax(z: jax.Array) -> jax.Array:
    """Softmax of rows whose maximum is 0 (or all -inf, which gives zeros)."""
    weight = jnp.exp(z)
    total = jnp.sum(weight, axis=-1, keepdims=True)
    return jnp.where(total > 0, weight / jnp.where(total > 0, total, 1), 0)

