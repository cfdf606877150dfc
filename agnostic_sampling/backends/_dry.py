"""DRY's penalty (`agnostic_sampling._dry`), written once for NumPy and JAX arrays.

On a history ``(N, T)`` whose first ``L`` entries are valid, searched over its last ``W`` of them
(``W = L``, or ``last_n`` when smaller): every earlier position ``p`` gets the length ``n(p)`` of
the longest run ending at ``p`` that equals the run ending at the history's last entry, capped at
the number of entries after the last breaker (ids outside ``[0, V)`` count as breakers). The token
at ``p + 1`` would extend that repetition; unless it is a breaker, it is penalised by the largest
``n(p)`` among its positions when that is at least ``allowed_length``.

The lengths grow one comparison at a time, for every position at once, until no run is still
matching: as many passes as the longest match (NumPy keeps only the matching positions; JAX a
``lax.while_loop`` over ``(N, T)``), at most ``allowed_length + E`` with ``E`` the exponent clamp,
past which the penalty no longer grows. The penalties are written only at the penalised tokens
(a scatter of the minimum): nothing of size ``(N, T, V)``, and no pass over ``(N, V)``.

Under ``jit`` (README "Bad input", traced column): a multiplier that is not a finite number >= 0,
a base that is not finite >= 1, or ``last_n == 0`` turns the row's DRY off; an allowed length
below 1 is 1; a ``last_n`` below -1 is -1 (the whole history).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agnostic_sampling._dry import Dry

__all__ = ["apply", "match_lengths"]

_FLOAT_MAX_LOG = 88.7228391  # log(float32 max), llama.cpp's bound on the exponent


def _rows(value: Any, batch_shape: tuple[int, ...], xp: Any, dtype: Any, per_token: bool = False) -> Any:
    from agnostic_sampling.backends._shaping import _rows_of

    return _rows_of(value, batch_shape, per_token, xp, dtype)


def _settings(dry: Dry, batch_shape: tuple[int, ...], xp: Any, dtype: Any) -> tuple[Any, ...]:
    """``(on, multiplier, base, allowed, last_n, clamp)`` per row ``(N,)``, the traced policy applied.

    ``clamp`` is the exponent bound ``E`` (the history's width past any match where there is none).
    """
    m = _rows(dry.multiplier, batch_shape, xp, dtype)
    b = _rows(dry.base, batch_shape, xp, dtype)
    allowed = xp.clip(_rows(dry.allowed_length, batch_shape, xp, None), 1, 2**30)
    last_n = xp.maximum(_rows(dry.last_n, batch_shape, xp, None), -1)
    on = xp.isfinite(m) & (m > 0) & xp.isfinite(b) & (b >= 1) & (last_n != 0)
    big = b > 1.000001
    log_b = xp.log(xp.where(big, b, 2))
    clamp = xp.where(big, xp.minimum(xp.floor(xp.asarray(_FLOAT_MAX_LOG, dtype) / log_b), 2**30), 2**30)
    return on, m, b, allowed.astype(xp.int32), last_n, clamp.astype(xp.int32)


def _breaker(history: Any, dry: Dry, batch_shape: tuple[int, ...], vocab: int, xp: Any) -> Any:
    """Whether each history entry ``(N, T)`` is a breaker (a given breaker id, or no token id)."""
    out = (history < 0) | (history >= vocab)
    if dry.breakers is not None:
        breakers = _rows(dry.breakers, batch_shape, xp, None, per_token=True)  # (N, S)
        hit = history[:, :, None] == breakers[:, None, :]
        out = out | xp.any(hit & (breakers[:, None, :] >= 0), axis=2)
    return out


def match_lengths(history: Any, lengths: Any, first: Any, limit: Any, xp: Any) -> Any:
    """``n(p)``, ``(N, T)``: how far the run ending at ``p`` equals the run ending at ``L - 1``.

    Args:
        history: ``(N, T)`` ids.
        lengths: ``(N,)`` ``L``, the valid entries.
        first: ``(N,)`` the first position searched (``L - W``); no run reaches before it.
        limit: ``(N,)`` the largest length counted (past the last breaker, the clamp).
        xp: ``numpy`` or ``jax.numpy``.

    Only ``first <= p < L - 1`` can be positive.
    """
    n_rows, width = history.shape
    position = xp.arange(width)[None, :]
    last = xp.take_along_axis(history, xp.clip(lengths - 1, 0, width - 1)[:, None], axis=1)
    alive = (position >= first[:, None]) & (position < lengths[:, None] - 1) & (history == last)
    alive = alive & (limit[:, None] > 0)
    if hasattr(history, "at"):
        return _jax_lengths(history, lengths, first, limit, alive)
    rows, where = np.nonzero(alive)
    n = np.zeros((n_rows, width), np.int32)
    t = 0
    while rows.size:
        n[rows, where] += 1
        t += 1
        back = where - t
        ok = (back >= first[rows]) & (t < limit[rows])
        rows, where, back = rows[ok], where[ok], back[ok]
        ok = history[rows, back] == history[rows, lengths[rows] - 1 - t]
        rows, where = rows[ok], where[ok]
    return n


def _jax_lengths(history: Any, lengths: Any, first: Any, limit: Any, alive: Any) -> Any:
    import jax.numpy as jnp
    from jax import lax

    n_rows, width = history.shape
    position = jnp.arange(width)[None, :]
    padded = jnp.concatenate([jnp.full_like(history, -2), history], axis=1)  # h[p - t] past the start: -2

    def body(carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        t, alive, n = carry
        n = n + alive.astype(jnp.int32)
        t = t + 1
        back = lax.dynamic_slice_in_dim(padded, width - t, width, axis=1)  # history[:, p - t]
        target = jnp.take_along_axis(history, jnp.clip(lengths - 1 - t, 0, width - 1)[:, None], axis=1)
        ok = (position - t >= first[:, None]) & (t < limit[:, None]) & (back == target)
        return t, alive & ok, n

    def more(carry: tuple[Any, Any, Any]) -> Any:
        return jnp.any(carry[1])

    _, _, n = lax.while_loop(more, body, (jnp.int32(0), alive, jnp.zeros((n_rows, width), jnp.int32)))
    return n


def apply(x: Any, history: Any, lengths: Any, dry: Dry, batch_shape: tuple[int, ...], xp: Any) -> Any:
    """``x`` ``(N, V)`` with DRY's penalties subtracted (on NumPy in place: ``x`` is the shaping's own).

    Args:
        x: ``(N, V)`` logits in compute precision.
        history: ``(N, T)`` ids; lengths: ``(N,)`` valid entries, clipped to ``[0, T]``.
        lengths: ``(N,)`` integers.
        dry: the parameters, each broadcast to the batch.
        batch_shape: the logits' batch shape.
        xp: ``numpy`` or ``jax.numpy``.
    """
    n_rows, vocab = x.shape
    width = history.shape[1]
    on, m, b, allowed, last_n, clamp = _settings(dry, batch_shape, xp, x.dtype)
    lengths = xp.where(on, lengths, 0)  # a row with DRY off has nothing to search
    window = xp.where(last_n < 0, lengths, xp.minimum(lengths, last_n))
    first = lengths - window
    position = xp.arange(width)[None, :]
    breaker = _breaker(history, dry, batch_shape, vocab, xp)
    inside = (position >= first[:, None]) & (position < lengths[:, None])
    last_break = xp.max(xp.where(breaker & inside, position, first[:, None] - 1), axis=1)
    limit = xp.minimum(lengths - 1 - last_break, allowed + clamp)
    n = match_lengths(history, lengths, first, limit, xp)
    # the token after p, penalised by n(p) unless it is a breaker
    following = xp.concatenate([history[:, 1:], xp.full((n_rows, 1), -1, history.dtype)], axis=1)
    after_break = xp.concatenate([breaker[:, 1:], xp.ones((n_rows, 1), bool)], axis=1)
    hit = (n >= allowed[:, None]) & ~after_break
    exponent = xp.minimum(n - allowed[:, None], clamp[:, None]).astype(x.dtype)
    penalty = m[:, None] * xp.power(b[:, None], xp.maximum(exponent, 0))
    if hasattr(x, "at"):
        rows = xp.broadcast_to(xp.arange(n_rows)[:, None], following.shape)
        token = xp.where(hit, following, vocab)
        value = x[rows, xp.clip(token, 0, vocab - 1)] - penalty
        return x.at[rows, token].min(value.astype(x.dtype), mode="drop")
    rows, where = np.nonzero(hit)
    if rows.size:
        flat = rows * vocab + following[rows, where]
        np.minimum.at(x.reshape(-1), flat, (x.reshape(-1)[flat] - penalty[rows, where]).astype(x.dtype))
    return x


def clamp_of(base: float) -> float:
    """llama.cpp's exponent bound for ``base`` (``inf``: none), for the float64 reference."""
    return math.floor(_FLOAT_MAX_LOG / math.log(base)) if base > 1.000001 else math.inf
