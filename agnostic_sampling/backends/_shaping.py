"""Logit shaping, written once for NumPy and JAX arrays: bias, penalties, token masks.

Each backend calls `shape` at the start of its pipeline, on the rows ``(N, V)`` in compute
precision, when `present` says some shaping input is given; a step whose inputs are ``None`` is
left out entirely. The steps, in order:

1. ``logit_bias`` is added.
2. Penalties over the history (every valid entry of ``history`` counts: entries at or past a
   row's ``history_lengths`` and ``-1`` padding are ignored). For each distinct token with
   count ``c > 0``: the repetition penalty ``r`` divides a positive logit by ``r`` and multiplies
   a negative one by ``r`` (once, whatever ``c``), then ``c * frequency + presence`` is
   subtracted. Counts come from a scatter-add over the ``N * T`` history entries, and the new
   logits are written back at those entries only: no pass over ``(N, T, V)``, and none over
   ``(N, V)`` beyond the counts' zeroing.
3. ``allowed`` keeps only its tokens, ``banned`` sets its tokens to ``-inf``, and ``vocab_size``
   sets the tokens at or past it to ``-inf`` (a padded vocabulary's tail). A mask is boolean
   ``(..., V)`` or a packed bitmask of uint32 words ``(..., ceil(V / 32))``: bit ``j`` of word
   ``w`` is token ``32 * w + j``.

Under ``jit`` the values are traced (the pytree of `SamplingParams`), and bad values follow the
traced column of the README's "Bad input" table: a repetition penalty that is not a finite
number > 0 is 1, a NaN frequency or presence penalty is 0, history ids outside ``[0, V)`` count
as padding, lengths are clipped to ``[0, T]``. A row left with no finite logit gives id ``-1``.
"""

from __future__ import annotations

from typing import Any

from agnostic_sampling._params import SamplingParams

_MASKS = ("allowed", "banned", "vocab_size")
_PENALTIES = ("repetition_penalty", "frequency_penalty", "presence_penalty")


def present(params: SamplingParams) -> bool:
    """Whether ``params`` asks for any shaping step (static: depends on ``None``-ness only)."""
    return (params.logit_bias is not None or any(getattr(params, n) is not None for n in _MASKS)
            or _penalized(params))


def _penalized(params: SamplingParams) -> bool:
    return params.history is not None and any(getattr(params, n) is not None for n in _PENALTIES)


def _rows_of(value: Any, batch_shape: tuple[int, ...], per_token: bool, xp: Any, dtype: Any = None) -> Any:
    """``value`` broadcast to the batch and flattened to ``(N,)``, or ``(N, W)`` when ``per_token``
    (its last axis, of width ``W``, runs over tokens, words or history positions)."""
    array = xp.asarray(value) if dtype is None else xp.asarray(value).astype(dtype)
    if not per_token:
        return xp.reshape(xp.broadcast_to(array, batch_shape), (-1,))
    return xp.reshape(xp.broadcast_to(array, (*batch_shape, array.shape[-1])), (-1, array.shape[-1]))


def unpack_bits(words: Any, vocab: int, xp: Any) -> Any:
    """A packed bitmask ``(N, ceil(V / 32))`` of uint32 words as booleans ``(N, V)``."""
    shifts = xp.arange(32, dtype=xp.uint32)
    bits = (words[:, :, None] >> shifts) & xp.uint32(1)
    return xp.reshape(bits, (words.shape[0], -1))[:, :vocab] != 0


def _mask_rows(value: Any, batch_shape: tuple[int, ...], vocab: int, xp: Any) -> Any:
    rows = _rows_of(value, batch_shape, True, xp)
    return rows if rows.dtype == bool else unpack_bits(rows, vocab, xp)


def counts(history: Any, valid: Any, vocab: int, xp: Any) -> Any:
    """How often each token occurs among the valid entries of each row: ``(N, V + 1)`` int32.

    One scatter-add over the ``N * T`` entries; invalid entries land in the extra last column.
    """
    n_rows = history.shape[0]
    ids = xp.where(valid, history, vocab)
    rows = xp.broadcast_to(xp.arange(n_rows)[:, None], ids.shape)
    zeros = xp.zeros((n_rows, vocab + 1), xp.int32)
    if hasattr(zeros, "at"):  # JAX: a functional update
        return zeros.at[rows, ids].add(1)
    xp.add.at(zeros, (rows, ids), 1)
    return zeros


def _set_at(x: Any, rows: Any, ids: Any, values: Any, valid: Any, xp: Any) -> Any:
    """``x`` with ``values`` written at the valid ``(rows, ids)``; repeated entries carry equal values."""
    if hasattr(x, "at"):  # JAX: invalid entries point past the row and are dropped
        return x.at[rows, xp.where(valid, ids, x.shape[1])].set(values, mode="drop")
    x[rows[valid], ids[valid]] = values[valid]
    return x


def _apply_penalties(x: Any, params: SamplingParams, batch_shape: tuple[int, ...], xp: Any) -> Any:
    n_rows, vocab = x.shape
    history = _rows_of(params.history, batch_shape, True, xp)
    width = history.shape[1]
    if params.history_lengths is None:
        lengths = xp.full((n_rows,), width)
    else:
        lengths = xp.clip(_rows_of(params.history_lengths, batch_shape, False, xp), 0, width)
    valid = (history >= 0) & (history < vocab) & (xp.arange(width)[None, :] < lengths[:, None])
    safe = xp.where(valid, history, 0)
    rows = xp.broadcast_to(xp.arange(n_rows)[:, None], history.shape)
    count = counts(history, valid, vocab, xp)[rows, xp.where(valid, history, vocab)].astype(x.dtype)
    value = x[rows, safe]
    if params.repetition_penalty is not None:
        r = _rows_of(params.repetition_penalty, batch_shape, False, xp, x.dtype)
        r = xp.where((r > 0) & xp.isfinite(r), r, 1)[:, None]
        value = xp.where(value > 0, value / r, value * r)
    if params.frequency_penalty is not None:
        f = _rows_of(params.frequency_penalty, batch_shape, False, xp, x.dtype)
        value = value - count * xp.where(xp.isnan(f), 0, f)[:, None]
    if params.presence_penalty is not None:
        p = _rows_of(params.presence_penalty, batch_shape, False, xp, x.dtype)
        value = value - xp.where(xp.isnan(p), 0, p)[:, None]
    return _set_at(x, rows, safe, value.astype(x.dtype), valid, xp)


def shape(x: Any, params: SamplingParams, batch_shape: tuple[int, ...], xp: Any) -> Any:
    """The shaped rows: a new ``(N, V)`` array (``x``, the caller's data, is never written).

    Args:
        x: ``(N, V)`` logits in compute precision, ``N = prod(batch_shape)``.
        params: the parameters; only the shaping fields are read.
        batch_shape: ``logits.shape[:-1]``, to broadcast per-row inputs.
        xp: ``numpy`` or ``jax.numpy``.

    Returns:
        ``(N, V)`` logits of ``x``'s dtype with bias, penalties and masks applied.
    """
    vocab = x.shape[1]
    dtype = x.dtype
    if params.logit_bias is not None:
        x = x + _rows_of(params.logit_bias, batch_shape, True, xp, dtype)
    elif _penalized(params):
        x = x.copy()  # penalties write in place on NumPy
    if _penalized(params):
        x = _apply_penalties(x, params, batch_shape, xp)
    minus_inf = xp.asarray(-xp.inf, dtype)
    if params.allowed is not None:
        x = xp.where(_mask_rows(params.allowed, batch_shape, vocab, xp), x, minus_inf)
    if params.banned is not None:
        x = xp.where(_mask_rows(params.banned, batch_shape, vocab, xp), minus_inf, x)
    if params.vocab_size is not None:
        size = _rows_of(params.vocab_size, batch_shape, False, xp)
        x = xp.where(xp.arange(vocab)[None, :] < size[:, None], x, minus_inf)
    return x
