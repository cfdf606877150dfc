"""The sampling pipeline for JAX arrays: static shapes, traced parameters, no sort of the vocabulary.

This module is the backend's face: the conversions at the boundary, the jitted operations and
the public ones. The stages they run are in `_jax_pipeline`; each row's threshold is found by
`_jax_search`, each token drawn by `_jax_draw`; log-probabilities are `_jax_logprobs`, chains in
any order `_jax_chain`.

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

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import register_pytree as register_chain_pytree
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import register_pytree
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import is_seed
from agnostic_sampling._seed import register_pytree as register_seed_pytree
from agnostic_sampling._seed import to_words
from agnostic_sampling.backends import _acceptance
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._jax_chain import _logprobs_chain
from agnostic_sampling.backends._jax_chain import _process_chain
from agnostic_sampling.backends._jax_chain import _sample_chain
from agnostic_sampling.backends._jax_common import _block_width
from agnostic_sampling.backends._jax_common import _Steps
from agnostic_sampling.backends._jax_draw import _draw
from agnostic_sampling.backends._jax_draw import _first_in_blocks
from agnostic_sampling.backends._jax_draw import _index_of_first
from agnostic_sampling.backends._jax_draw import _uniform
from agnostic_sampling.backends._jax_draw import _uniform_grid
from agnostic_sampling.backends._jax_logprobs import _logprobs
from agnostic_sampling.backends._jax_logprobs import _logprobs_refined
from agnostic_sampling.backends._jax_pipeline import _block_max_and_nan
from agnostic_sampling.backends._jax_pipeline import _compute_dtype
from agnostic_sampling.backends._jax_pipeline import _first_of_max
from agnostic_sampling.backends._jax_pipeline import _full_z
from agnostic_sampling.backends._jax_pipeline import _max_and_nan
from agnostic_sampling.backends._jax_pipeline import _maybe_on
from agnostic_sampling.backends._jax_pipeline import _per_row
from agnostic_sampling.backends._jax_pipeline import _prepare
from agnostic_sampling.backends._jax_pipeline import _process
from agnostic_sampling.backends._jax_pipeline import _row_threshold
from agnostic_sampling.backends._jax_pipeline import _softmax
from agnostic_sampling.backends._jax_pipeline import _status
from agnostic_sampling.backends._jax_pipeline import _steps
from agnostic_sampling.backends._jax_search import _CANDIDATE_BLOCK
from agnostic_sampling.backends._jax_search import _for_rows
from agnostic_sampling.backends._jax_search import _take_rows

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

