"""The sampling pipeline for JAX arrays: static shapes, traced parameters, no sort of the vocabulary.

How it avoids sorting the vocabulary
------------------------------------
Every truncation step keeps an *upper set* of the row (all tokens whose tempered logit ``z`` is at
least some threshold), so each step is decided by one threshold per row:

- top-k (and min_keep): the largest ``t`` with ``count(z >= t) >= k``;
- top-p: the smallest ``t`` with ``sum(exp(z) for z > t) < p * sum(exp(z) over the kept set)``;
- min-p: no search, ``t = log(min_p)`` (the row maximum is 0 after the shift).

Candidates first. From 8192 tokens (a multiple of 32), one fused pass takes the maximum of every
block of 32 tokens, ``lax.top_k`` picks the 64 blocks with the largest maxima, and those 2048
tokens are gathered (see `_candidates`). Every other token is at most ``bound``, the smallest
maximum picked, so a threshold found among the candidates is exact as soon as it is shown to lie
above ``bound`` (enough candidates above it for top-k, enough mass above it for top-p), and a row
whose kept set lies above ``bound`` is drawn from its candidates alone. Rows where that fails (a
large k, a wide nucleus, ties at ``bound``) take the whole-row route below, under a ``lax.cond``
that runs only when some row needs it; each row's result depends on that row alone.

The whole-row route finds each threshold exactly by a bisection whose every step is one masked
reduction over the vocabulary with a per-row scalar result. The search runs on the integer bit
pattern of the float, made monotone (negative floats have their magnitude bits flipped), so it
ends on adjacent floats whatever the values; a top-k row stops early once ``count(z >= t) == k``.
Each pass tests 4 thresholds at once (a 5-ary search: at most 14 passes for float32 instead of 31
bisection steps): for V >= 2048 with a power-of-two block of 32-128 tokens dividing V, one
variadic reduce over the blocks fuses the four masked sums into one loop (about the cost of one
plain masked reduction on XLA:CPU), then a tree reduction adds the block sums (see `_row_sums`);
otherwise one threshold per pass (plain bisection, 31 steps). Counts are float32 sums (exact
below 2**24 tokens) because XLA vectorises floating-point reductions on CPU and not integer ones;
masses are accurate to ~1e-7 at 2**17 tokens.

The draw is an inverse-CDF draw in token order: one float32 uniform ``u`` per row from the
caller's key (not noise for the whole vocabulary, which costs more than the rest of a draw on
CPU), then the token where the running mass of the kept weights ``exp(z)`` crosses ``u`` times
their total: block sums in one fused pass, a bisection on the block prefixes, the last steps
inside one gathered block (see `_draw`). A token outside the kept set is never returned,
whatever ``u``. Under vocabulary sharding the whole-row route moves per-row scalars (and one
block per row for the draw); the candidate route also moves the block maxima (V / 32 floats per
row) and the candidates (2048 floats per row).

Parameters are traced data: their values never cause a recompile. Only shapes, dtypes, which
fields are ``None``, and whether a concrete (untraced) field is everywhere at its off value (then
its step is left out of the program) are static. Searches that a row does not need (``k <= 1``,
a step off for that row, a greedy row) finish before their first pass. Under ``jit`` bad values follow SPEC
section 4's traced column: NaN logits count as ``-inf``; a row with ``+inf`` keeps only its
``+inf`` tokens; a row with no finite logit gives id ``-1`` and zero probabilities; a negative,
NaN or infinite temperature makes the row greedy; a negative ``top_k`` is 0; ``top_p`` and
``min_p`` are clipped to ``[0, 1]`` (NaN disables them); ``min_keep < 1`` is 1.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import register_pytree
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF

register_pytree()

# --------------------------------------------------------------------------------------------
# Conversions at the boundary


def asarray(logits: Any) -> jax.Array:
    """The logits as a JAX array (tracers and arrays pass through unchanged).

    NumPy float64 input becomes float32 unless ``jax_enable_x64`` is on, as everywhere in JAX.
    """
    return logits if isinstance(logits, jax.Array) else jnp.asarray(logits)


def as_key(key: Any) -> jax.Array:
    """A typed JAX key array from a ``jax.random.key``, a legacy ``PRNGKey``, or an int seed.

    A batch of keys (shape ``batch_shape``, or ``batch_shape + (2,)`` for legacy uint32 keys)
    gives one key per row.
    """
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("key must be a jax.random.key, a PRNGKey or an int seed, got bool")
    if isinstance(key, (int, np.integer)):
        return jax.random.key(key)
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
        "key must be a jax.random.key, a legacy PRNGKey (uint32 of shape (..., 2)) or an int seed, "
        f"got {described}"
    )


# --------------------------------------------------------------------------------------------
# Static plan: what can be decided at trace time


class _Plan(NamedTuple):
    """Which steps the compiled program contains (static; values stay traced)."""

    temperature: bool  # False when the temperature is concretely 1 everywhere: no division
    top_k: bool
    top_p: bool
    min_p: bool
    min_keep: bool  # False when min_keep is concretely 1 everywhere: v_n is the row maximum


def _maybe_on(value: Any, off: Any) -> bool:
    """False when ``value`` is None or concretely equal to ``off`` everywhere; True otherwise."""
    if value is None:
        return False
    if is_tracer(value):
        return True
    return not bool(np.all(np.asarray(value) == off))


def _plan(params: SamplingParams) -> _Plan:
    return _Plan(
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


class _Rows(NamedTuple):
    """Per-row parameters after the traced bad-value policy, each of shape (N,)."""

    greedy: jax.Array
    temperature: jax.Array  # 1 on greedy rows, so that dividing by it is harmless
    top_k: jax.Array  # int32, 0: off
    top_p: jax.Array  # 1: off
    min_p: jax.Array  # 0: off
    min_keep: jax.Array  # int32 >= 1


def _per_row(params: SamplingParams, name: str, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    value = getattr(params, name)
    value = OFF[name] if value is None else value
    return jnp.broadcast_to(jnp.asarray(value).astype(dtype), batch_shape).reshape(-1)


def _rows_params(params: SamplingParams, batch_shape: tuple[int, ...], dtype: Any) -> _Rows:
    temperature = _per_row(params, "temperature", batch_shape, dtype)
    greedy = ~(temperature > 0) | ~jnp.isfinite(temperature)  # also NaN, < 0 and inf
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


def _index_of_first(hit: jax.Array) -> jax.Array:
    """First column where ``hit`` is True (V where none), as a min reduction in float32.

    Float32 because XLA vectorises floating-point reductions on CPU; exact below 2**24.
    """
    vocab = hit.shape[-1]
    dtype = jnp.float32 if vocab < 2**24 else jnp.int32
    iota = lax.broadcasted_iota(dtype, hit.shape, hit.ndim - 1)
    return jnp.min(jnp.where(hit, iota, jnp.asarray(vocab, dtype)), axis=-1).astype(jnp.int32)


def _count(mask: jax.Array) -> jax.Array:
    """Number of True per row, summed in float32 (exact below 2**24 tokens)."""
    dtype = jnp.float32 if mask.shape[-1] < 2**24 else jnp.int32
    return jnp.sum(mask.astype(dtype), axis=-1)


def _max_and_nan(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each row's maximum ignoring NaN, and whether the row holds NaN.

    Not ``isnan(jnp.max(x))``: XLA:CPU's maximum propagates NaN on short rows but ignores it on
    long ones (measured with JAX 0.10: from about 2000 tokens on, an all-NaN row has maximum -inf).
    With `_block` blocks, one fused pass (a variadic reduce per block, then per-row reductions
    of the block results); otherwise two reductions.
    """
    vocab = x.shape[1]
    block = _block(vocab)
    if not block:
        nan = jnp.isnan(x)
        return jnp.max(jnp.where(nan, -jnp.inf, x), axis=-1), jnp.any(nan, axis=-1)
    block_max, has_nan = _scan(x, block)
    return jnp.max(block_max, axis=-1), has_nan


def _status(row_max: jax.Array, has_nan: jax.Array) -> jax.Array:
    """Per-row status from the maximum of the NaN-free row and whether the row held NaN."""
    return jnp.where(
        has_nan, ROW_NAN,
        jnp.where(row_max == jnp.inf, ROW_POSINF, jnp.where(row_max == -jnp.inf, ROW_NO_FINITE, ROW_OK)),
    ).astype(jnp.int8)


# --------------------------------------------------------------------------------------------
# Exact thresholds by bisection on the monotone bit pattern


def _int_dtype(dtype: Any) -> Any:
    return jnp.int64 if dtype == jnp.float64 else jnp.int32


def _to_key(value: jax.Array) -> jax.Array:
    """Integer whose order is the float order (-0.0 just below +0.0); NaN-free input."""
    bits = lax.bitcast_convert_type(value, _int_dtype(value.dtype))
    magnitude = jnp.asarray(np.iinfo(bits.dtype).max, bits.dtype)
    return jnp.where(bits < 0, bits ^ magnitude, bits)


def _from_key(key: jax.Array, dtype: Any) -> jax.Array:
    magnitude = jnp.asarray(np.iinfo(key.dtype).max, key.dtype)
    return lax.bitcast_convert_type(jnp.where(key < 0, key ^ magnitude, key), dtype)


_PROBES = 4  # thresholds tested per pass: XLA:CPU fuses them into one loop that costs about one


def _block(vocab: int) -> int:
    """Width of the inner blocks of `_row_sums`: the largest power of two dividing ``vocab``, at
    most 128 and at most ``vocab / 64``; 0 when that is below 32 (then one reduction per operand).

    A vocabulary split evenly over up to 64 devices (or any count whose shards are multiples of
    the block) keeps every block on one device; otherwise XLA gathers the per-device partial sums
    of a block, one scalar per row and device (still correct, just not reductions-only).
    """
    block = 1
    while vocab % (2 * block) == 0 and 2 * block <= min(128, vocab // 64):
        block *= 2
    return block if block >= 32 else 0


def _probes(vocab: int) -> int:
    """Thresholds per search pass: several when `_row_sums` can fuse them, else one."""
    return _PROBES if _block(vocab) else 1


def _row_sums(operands: list[jax.Array]) -> jax.Array:
    """Row sums of several (N, V) arrays, as (N, len(operands)), in about one pass.

    Each row is cut into blocks of `_block` tokens; one variadic reduce sums every operand's
    blocks (XLA:CPU fuses the element-wise work of all operands into one loop: four masked sums
    measured at about the cost of one materialised masked sum at 64 x 128256), then XLA's tree
    reduction adds the block sums. Blocks keep masses accurate (a fused reduce adds along the row
    in sequence: 4.6e-6 relative error measured over 128256 tokens, against 1e-7 this way) and
    keep sharding cheap: blocks never straddle an even split of the vocabulary, so the only
    collective is an all-reduce of one scalar per row and operand (a variadic reduce across
    devices would be all-gathered instead). Without such blocks, one reduction per operand.
    """
    rows, vocab = operands[0].shape
    block = _block(vocab)
    if not block:
        return jnp.stack([jnp.sum(x, axis=-1) for x in operands], axis=-1)
    blocks = tuple(x.reshape(rows, -1, block) for x in operands)
    zero = jnp.zeros((), operands[0].dtype)
    parts = lax.reduce(blocks, (zero,) * len(blocks),
                       lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)), (2,))
    return jnp.stack([jnp.sum(part, axis=-1) for part in parts], axis=-1)


def _search(lo: jax.Array, hi: jax.Array, done: jax.Array, step: Any,
            probes: int) -> tuple[jax.Array, jax.Array]:
    """Shrink integer brackets ``[lo, hi]`` until adjacent (or ``done``), all rows in lock step.

    Each pass tests ``probes`` points spread over the bracket, so it shrinks by a factor of
    ``probes + 1``. ``step(points) -> (go_up, finished)``, both (N, probes): ``go_up`` (monotone:
    true below the answer) moves ``lo`` up to a point, otherwise ``hi`` comes down to it;
    ``finished`` marks a point at which the answer is already exact. Spans stay below the
    integer range (the keys of -inf and +0.0 differ by < 2**31 - 1).
    """

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        lo, hi, done = carry
        return jnp.any(~done & (hi - lo > 1))

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        lo, hi, done = carry
        span = (hi - lo)[:, None]
        part = jnp.arange(1, probes + 1, dtype=lo.dtype)
        # lo + span * j / (probes + 1) without overflowing the integer type; strictly inside.
        points = lo[:, None] + (span // (probes + 1)) * part + (span % (probes + 1)) * part // (probes + 1)
        points = jnp.clip(points, lo[:, None] + 1, jnp.maximum(hi - 1, lo + 1)[:, None])
        go_up, finished = step(points)
        new_hi = jnp.minimum(hi, jnp.min(jnp.where(go_up, hi[:, None], points), axis=-1))
        below = go_up & (points < new_hi[:, None])  # a non-monotone answer cannot cross the bracket
        new_lo = jnp.maximum(lo, jnp.max(jnp.where(below, points, lo[:, None]), axis=-1))
        at_lo = jnp.any(below & finished & (points == new_lo[:, None]), axis=-1)
        active = ~done & (hi - lo > 1)
        return jnp.where(active, new_lo, lo), jnp.where(active, new_hi, hi), done | (active & at_lo)

    lo, hi, _ = lax.while_loop(cond, body, (lo, hi, done))
    return lo, hi


def _counts(z: jax.Array, thresholds: jax.Array) -> jax.Array:
    """``count(z >= t)`` per row for each column ``t`` of ``thresholds`` (N, P); float32 sums are
    exact below 2**24 tokens (int32 above)."""
    dtype = jnp.float32 if z.shape[-1] < 2**24 else jnp.int32
    return _row_sums([(z >= thresholds[:, j, None]).astype(dtype) for j in range(thresholds.shape[1])])


def _masses(z: jax.Array, weight: jax.Array, thresholds: jax.Array) -> jax.Array:
    """``sum(weight over z > t)`` per row for each column ``t`` of ``thresholds`` (N, P)."""
    return _row_sums([jnp.where(z > thresholds[:, j, None], weight, 0) for j in range(thresholds.shape[1])])


def _kth_largest(z: jax.Array, k: jax.Array, skip: jax.Array) -> jax.Array:
    """The k-th largest value of each row (ties counted), -inf when the row has fewer than k.

    The largest ``t`` with ``count(z >= t) >= k``; a row is finished early when exactly ``k``
    tokens are at or above ``t``, since then ``{z >= t}`` is already the top-k set. For
    ``k == 1`` the answer is the row maximum, 0, with no search (the usual ``min_keep``).
    """
    dtype = z.dtype
    first = k <= 1
    k = k.astype(jnp.float32 if z.shape[-1] < 2**24 else jnp.int32)[:, None]

    def step(probes: jax.Array) -> tuple[jax.Array, jax.Array]:
        count = _counts(z, _from_key(probes, dtype))
        return count >= k, count == k

    lo = jnp.broadcast_to(_to_key(jnp.asarray(-jnp.inf, dtype)), k.shape[:1])
    hi = _to_key(jnp.zeros(k.shape[:1], dtype)) + 1  # above the row maximum, 0
    lo, _ = _search(lo, hi, skip | first, step, _probes(z.shape[-1]))
    return jnp.where(first & ~skip, 0, _from_key(lo, dtype))


def _top_p_threshold(z: jax.Array, weight: jax.Array, floor: jax.Array, top_p: jax.Array,
                     skip: jax.Array, total: jax.Array | None = None) -> jax.Array:
    """Smallest ``t`` with ``sum(weight over z > t) < top_p * total``, where ``total`` is
    ``sum(weight over z >= floor)`` unless given.

    Tokens at or above the result are those whose strictly-more-probable mass is below ``p``;
    the row maximum (0) is the largest possible answer, so ``p == 0`` keeps the top token(s).
    """
    dtype = z.dtype
    if total is None:
        total = jnp.sum(weight * (z >= floor[:, None]), axis=-1)
    target = (top_p * total)[:, None]

    def step(probes: jax.Array) -> tuple[jax.Array, jax.Array]:
        mass_above = _masses(z, weight, _from_key(probes, dtype))
        return ~(mass_above < target), jnp.zeros(probes.shape, bool)

    # Just below the smallest received value the mass above is everything received, which is
    # never < p * itself. (Starting there rather than at -inf saves the passes that would
    # cross the binades below it: 2-3 of 14 on realistic rows.)
    lowest = jnp.min(jnp.where((z >= floor[:, None]) & (z > -jnp.inf), z, jnp.inf), axis=-1)
    hi = _to_key(jnp.zeros_like(floor))
    lo = jnp.where(lowest < jnp.inf, _to_key(jnp.minimum(lowest, 0).astype(dtype)) - 1, hi - 1)
    _, hi = _search(lo, hi, skip, step, _probes(z.shape[-1]))
    return _from_key(hi, dtype)


def _threshold(z: jax.Array, weight: jax.Array | None, rows: _Rows, plan: _Plan,
               skip: jax.Array) -> jax.Array:
    """Each row's final threshold: the kept set is the finite ``z`` at or above it (SPEC 3)."""
    dtype = z.dtype
    minus_inf = jnp.full(z.shape[:1], -jnp.inf, dtype)
    needs_min_keep = plan.min_keep and (plan.top_p or plan.min_p)
    # The min_keep floor v_n: the n-th largest; with n == 1 everywhere it is the maximum, 0.
    keep_floor = _kth_largest(z, rows.min_keep, skip) if needs_min_keep else jnp.zeros_like(minus_inf)

    threshold = minus_inf
    if plan.top_k:
        on = rows.top_k > 0
        kth = _kth_largest(z, jnp.maximum(rows.top_k, rows.min_keep), skip | ~on)
        threshold = jnp.where(on, kth, threshold)
    if plan.top_p:
        on = rows.top_p < 1
        nucleus = _top_p_threshold(z, weight, threshold, rows.top_p, skip | ~on)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(nucleus, keep_floor)), threshold)
    if plan.min_p:
        on = rows.min_p > 0
        floor = jnp.log(rows.min_p)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(floor, keep_floor)), threshold)
    return threshold


# --------------------------------------------------------------------------------------------
# Candidates: the thresholds from a few blocks of the row, with a proof that they are exact
# (the module docstring has the argument; `_candidate_threshold` the checks)

_CANDIDATE_BLOCK = 32
_CANDIDATE_BLOCKS = 64


def _candidate_block(vocab: int) -> int:
    """Block width for candidates, 0 when the row is too short (or not a multiple of it) to gain."""
    if vocab % _CANDIDATE_BLOCK or vocab // _CANDIDATE_BLOCK < 4 * _CANDIDATE_BLOCKS:
        return 0
    return _CANDIDATE_BLOCK


def _scan(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Maxima of blocks of ``block`` tokens ignoring NaN (N, V / block), and whether each row holds
    NaN (N,), in one fused pass (see `_max_and_nan` on why NaN has its own flag)."""
    rows, vocab = x.shape

    def combine(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return jnp.where(b[0] > a[0], b[0], a[0]), jnp.maximum(a[1], b[1])  # a NaN value never wins

    blocks = x.reshape(rows, -1, block)
    init = (jnp.asarray(-jnp.inf, x.dtype), jnp.float32(0))
    block_max, block_nan = lax.reduce((blocks, jnp.isnan(blocks).astype(jnp.float32)), init, combine, (2,))
    return block_max, jnp.max(block_nan, axis=-1) > 0


def _cleaned(raw: jax.Array, posinf: jax.Array, dtype: Any) -> jax.Array:
    """The traced bad-value policy, element-wise: NaN -> -inf; a row holding +inf (``posinf``)
    keeps 0 at its +inf tokens and -inf elsewhere."""
    x = raw.astype(dtype)
    x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    return jnp.where(posinf[:, None], jnp.where(x == jnp.inf, 0, -jnp.inf).astype(dtype), x)


def _tempered(x: jax.Array, shift: jax.Array, temperature: jax.Array, plan: _Plan) -> jax.Array:
    """``(x - shift) / temperature`` per row, bit for bit the same at any shape."""
    z = x - shift[:, None]
    if plan.temperature:
        # XLA rewrites a division by a broadcast row value into a multiplication by its
        # reciprocal (off by an ulp). A divisor that is not a broadcast (plus a float zero made
        # from an iota, which XLA does not fold) keeps the true division, fused, so the kept sets
        # match the NumPy backend bit for bit, and candidates match the row.
        zero = lax.broadcasted_iota(z.dtype, x.shape, 1) * 0
        z = z / (temperature[:, None] + zero)
    return z


class _Prepared(NamedTuple):
    raw: jax.Array  # (N, V) the logits as given (dtype too)
    rows: _Rows
    row_max: jax.Array  # (N,) maximum of the cleaned row; -inf for rows with no finite logit
    posinf: jax.Array  # (N,) the row holds +inf
    shift: jax.Array  # (N,) what is subtracted before tempering
    skip: jax.Array  # (N,) greedy rows and rows with no finite logit: no search
    status: jax.Array  # (N,) int8
    block_max: jax.Array | None  # (N, V / block) cleaned block maxima when candidates are used


def _prepare(logits: jax.Array, params: SamplingParams, plan: _Plan) -> _Prepared:
    dtype = _compute_dtype(logits.dtype)
    raw = logits.reshape(-1, logits.shape[-1])
    block = _candidate_block(raw.shape[1]) if (plan.top_k or plan.top_p or plan.min_p) else 0
    if block:
        block_max, has_nan = _scan(raw.astype(dtype), block)
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


def _full_z(prep: _Prepared, plan: _Plan) -> jax.Array:
    """The whole rows, cleaned and tempered."""
    dtype = prep.row_max.dtype
    return _tempered(_cleaned(prep.raw, prep.posinf, dtype), prep.shift, prep.rows.temperature, plan)


class _Candidates(NamedTuple):
    z: jax.Array  # (N, C) tempered candidate logits, in vocabulary order
    index: jax.Array  # (N, C) int32 their token ids
    bound: jax.Array  # (N,) every token outside the candidates has z <= bound


def _candidates(prep: _Prepared, plan: _Plan) -> _Candidates:
    rows, vocab = prep.raw.shape
    block = _candidate_block(vocab)
    values, chosen = lax.top_k(prep.block_max, _CANDIDATE_BLOCKS)
    chosen = jnp.sort(chosen, axis=-1)
    raw = jnp.take_along_axis(prep.raw.reshape(rows, -1, block), chosen[:, :, None], axis=1)
    raw = raw.reshape(rows, -1)
    z = _tempered(_cleaned(raw, prep.posinf, prep.row_max.dtype), prep.shift, prep.rows.temperature, plan)
    # The smallest of the k values as a reduction: a slice of the last one would stop XLA:CPU
    # from recognising top_k (it then sorts all the block maxima, 30 times slower).
    smallest = jnp.min(values, axis=-1, keepdims=True)
    bound = _tempered(smallest, prep.shift, prep.rows.temperature, plan)[:, 0]
    index = (chosen[:, :, None] * block + jnp.arange(block, dtype=jnp.int32)).reshape(rows, -1)
    return _Candidates(z, index, bound)


def _candidate_threshold(cand: _Candidates, rows: _Rows, plan: _Plan, skip: jax.Array,
                         row_mass: Any) -> tuple[jax.Array, jax.Array]:
    """Each row's threshold from its candidates, and whether it is proven exact (see above).

    ``row_mass()`` gives ``sum(exp(z))`` over whole rows; called (under a ``lax.cond``) only when
    some row has top-p on and top-k off, the one case that needs the whole row's mass.
    """
    z, bound = cand.z, cand.bound
    minus_inf = jnp.full(z.shape[:1], -jnp.inf, z.dtype)
    above = z > bound[:, None]
    n_above = _count(above)
    exact = jnp.ones(z.shape[:1], bool)

    def enough(k: jax.Array) -> jax.Array:
        return (k <= 1) | (n_above >= k.astype(n_above.dtype))

    truncating = jnp.zeros_like(exact)  # a step that min_keep guards is on for the row
    if plan.top_p:
        truncating |= rows.top_p < 1
    if plan.min_p:
        truncating |= rows.min_p > 0
    keep_floor = jnp.zeros_like(minus_inf)
    if plan.min_keep and (plan.top_p or plan.min_p):
        keep_floor = _kth_largest(z, rows.min_keep, skip | ~truncating)
        exact &= ~truncating | enough(rows.min_keep)

    threshold = minus_inf
    top_k_on = jnp.zeros_like(exact)
    if plan.top_k:
        top_k_on = rows.top_k > 0
        k = jnp.maximum(rows.top_k, rows.min_keep)
        threshold = jnp.where(top_k_on, _kth_largest(z, k, skip | ~top_k_on), threshold)
        exact &= ~top_k_on | enough(k)
    if plan.top_p:
        on = rows.top_p < 1
        weight = jnp.exp(z)
        received = jnp.sum(jnp.where(z >= threshold[:, None], weight, 0), axis=-1)
        needs_row = on & ~top_k_on & ~skip
        whole = lax.cond(jnp.any(needs_row), row_mass, lambda: jnp.zeros_like(received))
        total = jnp.where(top_k_on, received, whole)
        mass_above = jnp.sum(jnp.where(above & (z >= threshold[:, None]), weight, 0), axis=-1)
        exact &= ~on | ~(mass_above < rows.top_p * total)
        nucleus = _top_p_threshold(z, weight, threshold, rows.top_p, skip | ~on, total)
        threshold = jnp.where(on, jnp.maximum(threshold, jnp.minimum(nucleus, keep_floor)), threshold)
    if plan.min_p:
        on = rows.min_p > 0
        floor = jnp.minimum(jnp.log(rows.min_p), keep_floor)
        threshold = jnp.where(on, jnp.maximum(threshold, floor), threshold)
    return threshold, exact | skip


_CHUNK = 2**20  # tokens per chunk of rows for whole-row work: 8 rows of 128256 (~4 MB a copy)


def _take_rows(prep: _Prepared, index: jax.Array | None) -> _Prepared:
    """The rows ``index`` of every per-row array of ``prep`` (all of them for None)."""
    return prep if index is None else jax.tree_util.tree_map(lambda a: a[index], prep)


def _for_rows(need: jax.Array, compute: Any, default: jax.Array, vocab: int) -> jax.Array:
    """``compute(index, active)`` for the rows that ``need`` it, ``default`` elsewhere (N,).

    ``compute`` gets row indices (R,) and which of them are needed (R,), and returns one value
    per index; indices None mean every row, in order. The needed rows are gathered in chunks of
    ``R`` rows of ``vocab`` tokens (about `_CHUNK` tokens), one loop iteration per chunk, so the
    whole-row work scales with the rows that need it (typically a row or two with a flat
    distribution), not with the batch, and a chunk's arrays stay in cache through the 14 passes
    of a search (measured at 64 x 128256: all rows in chunks of 8 in 140-150 ms, at once in
    190-210). A batch that fits one chunk is computed at once, the rows not needed skipped
    inside the searches. (Under a batch-sharded layout the gather moves the needed rows between
    devices.)
    """
    rows = need.shape[0]
    size = max(1, _CHUNK // vocab)
    if size >= rows:
        return jnp.where(need, compute(None, need), default)
    # Needed rows first; the padding index ``rows`` is out of range, dropped by the scatter.
    order = jnp.nonzero(need, size=rows + size, fill_value=rows)[0].astype(jnp.int32)
    count = jnp.sum(need.astype(jnp.int32))

    def chunk(i: jax.Array, out: jax.Array) -> jax.Array:
        index = lax.dynamic_slice(order, (i * size,), (size,))
        active = index < rows
        values = compute(jnp.minimum(index, rows - 1), active)
        return out.at[index].set(values, mode="drop")

    return lax.fori_loop(0, (count + size - 1) // size, chunk, default)


def _row_threshold(prep: _Prepared, plan: _Plan, z: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Each row's exact threshold, and the candidates it came from (None without candidates).

    ``z`` is the whole rows when the caller has them; otherwise they are built only for the rows
    that need them."""
    rows, skip = prep.rows, prep.skip
    if prep.block_max is None:
        z = _full_z(prep, plan) if z is None else z
        return _threshold(z, jnp.exp(z) if plan.top_p else None, rows, plan, skip), None
    cand = _candidates(prep, plan)

    def row_mass() -> jax.Array:
        return jnp.sum(jnp.exp(_full_z(prep, plan) if z is None else z), axis=-1)

    threshold, exact = _candidate_threshold(cand, rows, plan, skip, row_mass)

    def whole_rows(index: jax.Array | None, active: jax.Array) -> jax.Array:
        sub = _take_rows(prep, index)
        full = _full_z(sub, plan) if z is None else (z if index is None else z[index])
        weight = jnp.exp(full) if plan.top_p else None
        return _threshold(full, weight, sub.rows, plan, sub.skip | ~active)

    vocab = prep.raw.shape[1]
    return lax.cond(jnp.all(exact), lambda: threshold,
                    lambda: _for_rows(~exact, whole_rows, threshold, vocab)), cand


def _first_of_max(prep: _Prepared) -> jax.Array:
    """First index of each cleaned row's maximum, computed only when some row is greedy (under
    vmap both branches run)."""
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


def _process(logits: jax.Array, params: SamplingParams, plan: _Plan) -> _Processed:
    prep = _prepare(logits, params, plan)
    z = _full_z(prep, plan)
    if plan.top_k or plan.top_p or plan.min_p:
        threshold, _ = _row_threshold(prep, plan, z)
        z = jnp.where(z >= threshold[:, None], z, -jnp.inf)
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    one_hot = lax.broadcasted_iota(jnp.int32, z.shape, 1) == _first_of_max(prep)[:, None]
    z = jnp.where(greedy[:, None], jnp.where(one_hot, 0, -jnp.inf).astype(z.dtype), z)
    return _Processed(z, prep.status)


def _softmax(z: jax.Array) -> jax.Array:
    """Softmax of rows whose maximum is 0 (or all -inf, which gives zeros)."""
    weight = jnp.exp(z)
    total = jnp.sum(weight, axis=-1, keepdims=True)
    return jnp.where(total > 0, weight / jnp.where(total > 0, total, 1), 0)


def _uniform(key: jax.Array, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """One uniform in ``[0, 1)`` per row: one stream for the batch, or one per row's own key.

    A row of a batch drawn with one key of its own gets exactly what that key gives a batch of
    one row, so per-row keys make draws batch-invariant.
    """
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
    """A pyramid of sums of adjacent pairs over ``weight``, halved while the width is even and the
    next level stays at least ``_TOP_LEVEL`` wide. Adjacent pairs, so that a vocabulary split
    evenly over devices stays split and each device sums its own pairs."""
    levels = [weight]
    while levels[-1].shape[1] % 2 == 0 and levels[-1].shape[1] // 2 >= _TOP_LEVEL:
        pairs = levels[-1].reshape(weight.shape[0], -1, 2)
        levels.append(pairs[:, :, 0] + pairs[:, :, 1])  # faster on CPU than a sum over the pair axis
    return levels


def _snap(weight: jax.Array, found: jax.Array) -> jax.Array:
    """``found`` where its weight is positive, else the nearest positive index (the largest one
    below, else the smallest above); -1 for a row with no positive weight. One reduction: indices
    above ``found`` are ranked below every index at or under it."""
    vocab = weight.shape[1]
    index_dtype = jnp.float32 if vocab < 2**24 else jnp.int32
    iota = lax.broadcasted_iota(jnp.int32, weight.shape, 1)
    position = iota.astype(index_dtype)
    rank = jnp.where(iota <= found[:, None], position, -position)
    best = jnp.max(jnp.where(weight > 0, rank, jnp.asarray(-vocab, index_dtype)), axis=-1)
    return jnp.where(best == -vocab, -1, jnp.where(best >= 0, best, -best).astype(jnp.int32))


def _inverse_cdf(weight: jax.Array, u: jax.Array) -> jax.Array:
    """One draw per row with probability ``weight / sum(weight)``, by inverse CDF; -1 for a row of
    zero weight. Never a token of zero weight, whatever ``u`` in ``[0, 1]``.

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
    """One draw per row with probability ``exp(z) / sum(exp(z))`` (``z <= 0``, -inf outside the kept
    set), by inverse CDF in token order; -1 for a row with no finite ``z``. Never a token of zero
    weight, whatever ``u`` in ``[0, 1]``.

    With `_block` blocks: one fused pass sums the weights of each block, a bisection on the block
    prefix sums (per-row scalars) picks the block holding ``u * total``, and the walk finishes
    inside that block's tokens, gathered (under vocabulary sharding, one block per row moves).
    Rounding can leave either walk on a zero weight; then the nearest positive block or token is
    taken (`_snap`), an event of probability at the float rounding level. Without blocks, the
    pyramid walk of `_inverse_cdf`.
    """
    rows, width = z.shape
    block = _block(width)
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


def _first_in_blocks(x: jax.Array, block_max: jax.Array, row_max: jax.Array) -> jax.Array:
    """First index of ``row_max`` in each row of ``x`` (N, V), given the maxima of its blocks
    (N, V / block): the first block whose maximum is the row's, then that block's tokens,
    gathered. ``x`` and ``block_max`` are NaN-free or NaN never equals ``row_max``."""
    rows, vocab = x.shape
    count = block_max.shape[1]
    block = vocab // count
    iota = lax.broadcasted_iota(jnp.float32, block_max.shape, 1)
    first_block = jnp.min(jnp.where(block_max == row_max[:, None], iota, count - 1), axis=-1)
    first_block = first_block.astype(jnp.int32)
    inner = jnp.take_along_axis(x.reshape(rows, count, block), first_block[:, None, None], axis=1)[:, 0]
    return first_block * block + jnp.minimum(_index_of_first(inner == row_max[:, None]), block - 1)


@jax.jit
def _greedy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = logits.reshape(-1, logits.shape[-1]).astype(_compute_dtype(logits.dtype))
    if _block(x.shape[1]):  # V >= 2048, a multiple of 32
        # One fused pass for the maxima of blocks of 32 (and NaN), then one gathered block per
        # row: measured at 64 x 128256 on XLA:CPU as fast as jnp.max, against 4x for a variadic
        # reduce keeping (maximum, first index, NaN) per block.
        block_max, has_nan = _scan(x, _CANDIDATE_BLOCK)
        row_max = jnp.max(block_max, axis=-1)
        ids = jnp.where(row_max == -jnp.inf, -1, _first_in_blocks(x, block_max, row_max))
        return ids.reshape(logits.shape[:-1]), _status(row_max, has_nan).reshape(logits.shape[:-1])
    row_max, has_nan = _max_and_nan(x)
    # Then the first index equal to the maximum: NaN never equals it, a +inf row finds its first +inf.
    ids = jnp.where(row_max == -jnp.inf, -1, _index_of_first(x == row_max[:, None]))
    return ids.reshape(logits.shape[:-1]), _status(row_max, has_nan).reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="plan")
def _process_logits(logits: jax.Array, params: SamplingParams, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    z, status = _process(logits, params, plan)
    return z.reshape(logits.shape), status.reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="plan")
def _probs(logits: jax.Array, params: SamplingParams, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    z, status = _process(logits, params, plan)
    return _softmax(z).reshape(logits.shape), status.reshape(logits.shape[:-1])


@functools.partial(jax.jit, static_argnames="plan")
def _sample(key: jax.Array, logits: jax.Array, params: SamplingParams,
            plan: _Plan) -> tuple[jax.Array, jax.Array]:
    prep = _prepare(logits, params, plan)
    u = _uniform(key, logits.shape[:-1], prep.row_max.dtype)
    cand = None
    if plan.top_k or plan.top_p or plan.min_p:
        threshold, cand = _row_threshold(prep, plan)

    def whole_rows(index: jax.Array | None = None, _: Any = None) -> jax.Array:
        z = _full_z(_take_rows(prep, index), plan)
        pick = (lambda a: a) if index is None else (lambda a: a[index])
        if plan.top_k or plan.top_p or plan.min_p:
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
    return _process_logits(logits, params, _plan(params))


def probs(logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """``softmax(process_logits(...))`` in float32 (float64 for float64 under x64); zero rows
    for rows with no finite logit."""
    return _probs(logits, params, _plan(params))


def sample(key: jax.Array, logits: jax.Array, params: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """One exact draw per row (int32; -1 for a row with no finite logit), by inverse CDF."""
    return _sample(key, logits, params, _plan(params))


# ============================================================================================
# Log-probabilities: the kept set of `process_logits` (`_prepare`, `_full_z`, `_row_threshold`),
# the row totals as plain sums, the top-n by `lax.top_k` of static size (its
# values and indices both used, so XLA:CPU keeps its partial top-k rather than a sort), the rank
# by a count.


@functools.partial(jax.jit, static_argnames=("plan", "kind", "top_n"))
def _logprobs(logits: jax.Array, ids: jax.Array, params: SamplingParams, plan: _Plan, kind: str,
              top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    prep = _prepare(logits, params, plan)
    dtype = prep.row_max.dtype
    n_rows, vocab = prep.raw.shape
    x = _cleaned(prep.raw, prep.posinf, dtype)
    z = _full_z(prep, plan)
    finite = z > -jnp.inf
    kept = finite
    if plan.top_k or plan.top_p or plan.min_p:
        threshold, _ = _row_threshold(prep, plan, z)
        kept = finite & (z >= threshold[:, None])
    greedy = prep.rows.greedy & (prep.row_max != -jnp.inf)
    one_hot = lax.broadcasted_iota(jnp.int32, z.shape, 1) == _first_of_max(prep)[:, None]
    kept = jnp.where(greedy[:, None], one_hot, kept)  # a greedy row's z is x - max: 0 at its argmax

    weight = jnp.exp(z)
    # Separate sums: on XLA:CPU each fuses with the exponential, where a variadic reduce of them
    # measured slower than the two passes. The same reduction over the same shape adds in the
    # same order, so a row that keeps every token gets the same two totals: a log mass of 0.
    total = jnp.sum(weight, axis=-1)
    kept_total = jnp.sum(jnp.where(kept, weight, 0), axis=-1)
    kept_count = _count(kept)
    raw_untempered = kind == "raw" and plan.temperature
    shifted = x - prep.shift[:, None]

    def log_of(mass: jax.Array) -> jax.Array:  # a row with no finite logit has mass 0: log-probs -inf
        return jnp.log(jnp.where(mass > 0, mass, 1))

    truncated = ~greedy & (kept_total < total)
    kept_log_mass = jnp.where(truncated, jnp.minimum(log_of(kept_total) - log_of(total), 0), 0)
    if kind == "processed":
        values = jnp.where(kept, z - log_of(kept_total)[:, None], -jnp.inf)
    else:
        raw_total = jnp.sum(jnp.exp(shifted), axis=-1) if raw_untempered else total
        values = shifted - log_of(raw_total)[:, None]

    ids = ids.reshape(-1)
    valid = (ids >= 0) & (ids < vocab)
    at = jnp.clip(ids, 0, vocab - 1).astype(jnp.int32)[:, None]
    token = jnp.where(valid, jnp.take_along_axis(values, at, axis=-1)[:, 0], jnp.nan)
    chosen = jnp.take_along_axis(x, at, axis=-1)
    rank = jnp.where(valid, 1 + _count(x > chosen).astype(jnp.int32), 0)
    if top_n:
        top_logprobs, top_ids = lax.top_k(values, top_n)
    else:
        top_logprobs, top_ids = jnp.zeros((n_rows, 0), dtype), jnp.zeros((n_rows, 0), jnp.int32)

    batch_shape = logits.shape[:-1]
    fields = (token.reshape(batch_shape), rank.reshape(batch_shape), top_ids.reshape(batch_shape + (top_n,)),
              top_logprobs.reshape(batch_shape + (top_n,)), kept_log_mass.reshape(batch_shape),
              kept_count.astype(jnp.int32).reshape(batch_shape))
    return fields, prep.status.reshape(batch_shape)


def logprobs(logits: jax.Array, ids: Any, params: SamplingParams, kind: str,
             top_n: int) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """``(token, rank, top_ids, top_logprobs, kept_log_mass, kept_count)`` and the row status;
    an out-of-range id gives ``token`` NaN and ``rank`` 0 (only reachable under tracing)."""
    return _logprobs(logits, jnp.asarray(ids), params, _plan(params), kind, top_n)
