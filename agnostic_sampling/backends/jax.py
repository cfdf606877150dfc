"""The sampling pipeline for JAX arrays: static shapes, traced parameters, no sort of the vocabulary.

This module is the backend's face: the conversions at the boundary, which steps a program
contains, the per-row parameters, the prepared (cleaned, tempered) rows, and the jitted
operations. Each row's threshold is found by `_jax_search`, each token drawn by `_jax_draw`.

Parameters are traced data: their values never cause a recompile. Only shapes, dtypes, which
fields are ``None``, and whether a concrete (untraced) field is everywhere at its off value (then
its step is left out of the program) are static. Searches that a row does not need (``k <= 1``,
a step off for that row, a greedy row) finish before their first pass. Under ``jit`` bad values
follow the traced column of the README's "Bad input" table: NaN logits count as ``-inf``; a row
with ``+inf`` keeps only its ``+inf`` tokens; a row with no finite logit gives id ``-1`` and zero
probabilities; a negative, NaN or infinite temperature makes the row greedy; a negative ``top_k``
is 0; ``top_p`` and ``min_p`` are clipped to ``[0, 1]`` (NaN disables them); ``min_keep < 1`` is 1.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import register_pytree as register_chain_pytree
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import register_pytree
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import is_seed
from agnostic_sampling._seed import register_pytree as register_seed_pytree
from agnostic_sampling._seed import to_words
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF
from agnostic_sampling.backends import _acceptance
from agnostic_sampling.backends import _chain
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._jax_common import _block_width
from agnostic_sampling.backends._jax_common import _cleaned
from agnostic_sampling.backends._jax_common import _count
from agnostic_sampling.backends._jax_common import _Prepared
from agnostic_sampling.backends._jax_common import _Rows
from agnostic_sampling.backends._jax_common import _Steps
from agnostic_sampling.backends._jax_common import _tempered
from agnostic_sampling.backends._jax_draw import _draw
from agnostic_sampling.backends._jax_draw import _first_in_blocks
from agnostic_sampling.backends._jax_draw import _index_of_first
from agnostic_sampling.backends._jax_draw import _uniform
from agnostic_sampling.backends._jax_draw import _uniform_grid
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCK
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCKS
from agnostic_sampling.backends._jax_search import _candidate_block
from agnostic_sampling.backends._jax_search import _candidate_threshold
from agnostic_sampling.backends._jax_search import _candidates
from agnostic_sampling.backends._jax_search import _for_rows
from agnostic_sampling.backends._jax_search import _row_sums
from agnostic_sampling.backends._jax_search import _take_rows
from agnostic_sampling.backends._jax_search import _threshold
from agnostic_sampling.backends._jax_strategies import SEARCHES

register_pytree()
register_seed_pytree()
register_chain_pytree()

# --------------------------------------------------------------------------------------------
# Conversions at the boundary


def asarray(logits: Any) -> jax.Array:
    """The logits as a JAX array (tracers and arrays pass through unchanged).

    NumPy float64 input becomes float32 unless ``jax_enable_x64`` is on, as everywhere in JAX.
    Input that is no numeric array (None, strings, objects, dates, ragged lists) is refused with
    a message naming ``logits``.
    """
    if isinstance(logits, jax.Array):
        return logits
    if logits is None:
        raise TypeError("logits must be a floating-point array of shape (..., V), got None")
    try:
        host = logits if hasattr(logits, "dtype") else np.asarray(logits)
    except ValueError as error:  # NumPy refuses ragged nested sequences
        raise ValueError(f"logits must be a rectangular array of shape (..., V); got a ragged "
                         f"{type(logits).__name__} ({error})") from None
    dtype = np.dtype(host.dtype)
    if dtype.kind not in "biuf" and dtype.name != "bfloat16" and not dtype.name.startswith("float"):
        raise TypeError(f"logits must be a floating-point array, got dtype {dtype}")
    return jnp.asarray(logits)


def as_key(key: Any) -> jax.Array | SeedWords:
    """A typed JAX key array from a ``jax.random.key``, a legacy ``PRNGKey``, or an int seed.

    A `Seed` gives its words.

    A batch of keys (shape ``batch_shape``, or ``batch_shape + (2,)`` for legacy uint32 keys)
    gives one key per row.
    """
    if is_seed(key):
        return to_words(key, jnp)
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("key must be a jax.random.key, a PRNGKey or an int seed, got bool")
    if isinstance(key, (int, np.integer)):
        if -(2**63) <= key < 2**63:
            return jax.random.key(key)
        # A seed past 64 bits (NumPy takes any int): every bit of it, through a SeedSequence.
        words = np.random.SeedSequence([abs(int(key)), int(key < 0)]).generate_state(
            jax.random.key_data(jax.random.key(0)).size, np.uint32)
        return jax.random.wrap_key_data(jnp.asarray(words))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == jnp.uint32 and key.ndim >= 1 and key.shape[-1] == 2:
            return jax.random.wrap_key_data(key)
        if jnp.issubdtype(key.dtype, jnp.integer) and key.ndim == 0:
            return jax.random.key(key)
    described = type(key).__name__
    if hasattr(key, "dtype"):
        described += f" of dtype {key.dtype} and shape {key.shape}"
    raise TypeError(
        "key must be a jax.random.key, a legacy PRNGKey (uint32 of shape (..., 2)), an int seed or "
        f"a Seed, got {described}"
    )


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
        return _threshold(full, weight, sub.rows, steps, sub.skip | ~active)

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


# --------------------------------------------------------------------------------------------
# The jitted operations (``steps`` is static)


@jax.jit
def _greedy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = logits.reshape(-1, logits.shape[-1]).astype(_compute_dtype(logits.dtype))
    if _block_width(x.shape[1]):  # V >= 2048, a multiple of 32
        # One fused pass for the maxima of blocks of 32 (and NaN), then one gathered block per
        # row: on XLA:CPU about the cost of jnp.max, far below a variadic reduce keeping
        # (maximum, first index, NaN) per block.
        block_max, has_nan = _block_max_and_nan(x, _CANDIDATE_BLOCK)
        row_max = jnp.max(block_max, axis=-1)
        ids = jnp.where(row_max == -jnp.inf, -1, _first_in_blocks(x, block_max, row_max))
        return ids.reshape(logits.shape[:-1]), _status(row_max, has_nan).reshape(logits.shape[:-1])
    row_max, has_nan = _max_and_nan(x)
    # Then the first index equal to the maximum: NaN never equals it, a +inf row finds its first +inf.
    ids = jnp.where(row_max == -jnp.inf, -1, _index_of_first(x == row_max[:, None]))
    return ids.reshape(logits.shape[:-1]), _status(row_max, has_nan).reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="steps")
def _process_logits(logits: jax.Array, params: SamplingParams, steps: _Steps) -> tuple[jax.Array, jax.Array]:
    z, status = _process(logits, params, steps)
    return z.reshape(logits.shape), status.reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="steps")
def _probs(logits: jax.Array, params: SamplingParams, steps: _Steps) -> tuple[jax.Array, jax.Array]:
    z, status = _process(logits, params, steps)
    return _softmax(z).reshape(logits.shape), status.reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="steps")
def _sample(key: jax.Array, logits: jax.Array, params: SamplingParams,
            steps: _Steps) -> tuple[jax.Array, jax.Array]:
    if not steps.temperature or _shaping.present(params):
        return _sample_rows(key, logits, params, steps)
    # Every row greedy (a traced condition): the argmax alone, as cheap as `greedy`.
    t = _per_row(params, "temperature", logits.shape[:-1], _compute_dtype(logits.dtype))
    all_greedy = jnp.all(~(t >= np.finfo(np.float32).tiny) | ~jnp.isfinite(t))
    return lax.cond(all_greedy, lambda: _greedy(logits), lambda: _sample_rows(key, logits, params, steps))


def _sample_rows(key: jax.Array, logits: jax.Array, params: SamplingParams,
                 steps: _Steps) -> tuple[jax.Array, jax.Array]:
    if _strategies.present(params):  # the steps after min-p need whole rows
        z, status = _process(logits, params, steps)
        ids = _draw(z, _uniform(key, logits.shape[:-1], z.dtype))
        return ids.reshape(logits.shape[:-1]), status.reshape(logits.shape[:-1])
    prep = _prepare(logits, params, steps)
    u = _uniform(key, logits.shape[:-1], prep.row_max.dtype)
    cand = None
    if steps.top_k or steps.top_p or steps.min_p:
        threshold, cand = _row_threshold(prep, steps)

    def whole_rows(index: jax.Array | None = None, _: Any = None) -> jax.Array:
        z = _full_z(_take_rows(prep, index), steps)
        pick = (lambda a: a) if index is None else (lambda a: a[index])
        if steps.top_k or steps.top_p or steps.min_p:
            z = jnp.where(z >= pick(threshold)[:, None], z, -jnp.inf)
        return _draw(z, pick(u))

    if cand is None:
        ids = whole_rows()
    else:
        # A row whose kept set lies inside its candidates is drawn from them alone.
        inside = prep.skip | (threshold > cand.bound) | (cand.bound == -jnp.inf)
        at = _draw(jnp.where(cand.z >= threshold[:, None], cand.z, -jnp.inf), u)
        from_candidates = jnp.where(at < 0, -1, jnp.take_along_axis(cand.index, jnp.maximum(at, 0)[:, None],
                                                                     axis=-1)[:, 0])
        ids = lax.cond(jnp.all(inside), lambda: from_candidates,
                       lambda: _for_rows(~inside, whole_rows, from_candidates, logits.shape[-1]))
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    ids = jnp.where(greedy, _first_of_max(prep), ids)
    return ids.reshape(logits.shape[:-1]), prep.status.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------------------------
# The public operations


def greedy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First index of each row's maximum (int32), and the row status."""
    return _greedy(logits)


def process_logits(logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """Tempered logits, ``-inf`` outside each row's kept set."""
    if isinstance(params, Chain):
        z, status = _process_chain(logits, params, _maybe_on(params.min_keep, OFF["min_keep"]))
        return z.reshape(logits.shape), status.reshape(logits.shape[:-1])
    return _process_logits(logits, params, _steps(params))


def probs(logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """``softmax(process_logits(...))`` in float32 (float64 for float64 under x64).

    Zero rows for rows with no finite logit.
    """
    if isinstance(params, Chain):
        z, status = _process_chain(logits, params, _maybe_on(params.min_keep, OFF["min_keep"]))
        return _softmax(z).reshape(logits.shape), status.reshape(logits.shape[:-1])
    return _probs(logits, params, _steps(params))


def sample(key: jax.Array, logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """One exact draw per row (int32; -1 for a row with no finite logit), by inverse CDF."""
    if isinstance(params, Chain):
        return _sample_chain(key, logits, params, _maybe_on(params.min_keep, OFF["min_keep"]))
    return _sample(key, logits, params, _steps(params))


# --------------------------------------------------------------------------------------------
# Speculative verification


@functools.partial(jax.jit, static_argnames="steps")
def _verify_draft(key: jax.Array, logits: jax.Array, draft_ids: jax.Array, draft_probs: jax.Array | None,
                  params: SamplingParams, steps: _Steps) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    z, status = _process(logits, params, steps)
    return _accept(key, z, status, logits.shape, draft_ids, draft_probs)


@functools.partial(jax.jit, static_argnames="min_keep_on")
def _verify_chain(key: jax.Array, logits: jax.Array, draft_ids: jax.Array, draft_probs: jax.Array | None,
                  chain: Chain, min_keep_on: bool) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    z, status = _process_chain(logits, chain, min_keep_on)
    return _accept(key, z, status, logits.shape, draft_ids, draft_probs)


def _accept(key: jax.Array, z: jax.Array, status: jax.Array, shape: tuple[int, ...], draft_ids: jax.Array,
            draft_probs: jax.Array | None) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """The acceptance rule on the processed rows ``z`` of the ``(B, K + 1, V)`` target logits."""
    batch, positions, _ = shape
    p = _softmax(z).reshape(shape)
    uniform = _uniform_grid(key, batch, positions).astype(p.dtype)
    decision = _acceptance.accept(p, draft_ids, draft_probs, uniform, jnp)
    last = _draw(jnp.log(decision.residual), uniform[:, -1])
    tokens = _acceptance.emitted(draft_ids.astype(jnp.int32), decision.num_accepted, last, jnp)
    return (tokens, decision.num_accepted), status.reshape(batch, positions)


def verify_draft(key: jax.Array, logits: jax.Array, draft_ids: jax.Array, draft_probs: jax.Array | None,
                 params: SamplingParams) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """Accept drafts by the standard rule, then one token from the residual or the bonus position.

    ``logits`` is ``(B, K + 1, V)``; returns ``(tokens (B, K + 1), num_accepted (B,))`` (int32)
    and the status of every target position ``(B, K + 1)``.
    """
    params = _acceptance.per_position(params, logits.shape[1], jnp)
    if isinstance(params, Chain):
        return _verify_chain(key, logits, jnp.asarray(draft_ids), draft_probs, params,
                             _maybe_on(params.min_keep, OFF["min_keep"]))
    return _verify_draft(key, logits, jnp.asarray(draft_ids), draft_probs, params, _steps(params))


# ============================================================================================
# Log-probabilities: the kept set of `process_logits` (`_prepare`, `_full_z`, `_row_threshold`),
# its mass and count and the rank from the threshold's candidates where they hold them, else from
# whole rows (`_row_totals`), the top-n from the blocks of 32 with the largest maxima (`_top_n`):
# a `lax.top_k` over the whole row sorts it on XLA:CPU (16 ms at 64 x 128256 on raw values, 65 ms
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


def logprobs(logits: jax.Array, ids: Any, params: SamplingParams, kind: str,
             top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """``(token, rank, top_ids, top_logprobs, kept_log_mass, kept_count)`` and the row status.

    An out-of-range id gives ``token`` NaN and ``rank`` 0 (only reachable under tracing).
    """
    if isinstance(params, Chain):
        return _logprobs_chain(logits, jnp.asarray(ids), params, _maybe_on(params.min_keep, OFF["min_keep"]),
                               kind, top_n)
    if _strategies.present(params):
        return _logprobs_refined(logits, jnp.asarray(ids), params, _steps(params), kind, top_n)
    return _logprobs(logits, jnp.asarray(ids), params, _steps(params), kind, top_n)


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


# ============================================================================================
# Chains in any order (`_chain`): the chain's kinds static (its pytree structure); whole rows, or
# for a chain that starts with top-k the candidate blocks, with whole rows under a `lax.cond`
# for batches where some row's top-k set reaches below the candidates


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
