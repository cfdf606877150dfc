"""Logit shaping, written once for NumPy and JAX arrays: bias, penalties, token masks.

Each backend calls `shape` at the start of its pipeline, on the rows ``(N, V)`` in compute
precision, when `present` says some shaping input is given; a step whose inputs are ``None`` is
left out entirely. The steps, in order:

1. ``logit_bias`` is added: dense ``(..., V)``, or sparse as a pair ``(ids, values)`` of
   ``(..., M)`` arrays (``-1`` ids are padding).
2. Penalties over the history (every valid entry of ``history`` counts: entries at or past a
   row's ``history_lengths`` and ``-1`` padding are ignored). For each distinct token with
   count ``c > 0``: the repetition penalty ``r`` divides a positive logit by ``r`` and multiplies
   a negative one by ``r`` (once, whatever ``c``), then ``c * frequency + presence`` is
   subtracted. Counts come from a sort of each row's ``T`` ids, and the new logits are written
   back at each row's distinct tokens only: nothing of size ``(N, T, V)``, and no pass over
   ``(N, V)``. Then DRY's penalty on the tokens that would extend a repeated sequence (`_dry`).
3. ``allowed`` keeps only its tokens, ``banned`` sets its tokens to ``-inf``, and ``vocab_size``
   sets the tokens at or past it to ``-inf`` (a padded vocabulary's tail). A mask is boolean
   ``(..., V)`` or a packed bitmask of uint32 words ``(..., ceil(V / 32))``: bit ``j`` of word
   ``w`` is token ``32 * w + j``. Then the sequence bans of `_ngrams` over the history:
   ``no_repeat_ngram_size`` and ``bad_words``.

Under ``jit`` the values are traced (the pytree of `SamplingParams`), and bad values follow the
traced column of the README's "Bad input" table: a repetition penalty that is not a finite
number > 0 is 1, a NaN frequency or presence penalty is 0, history ids outside ``[0, V)`` count
as padding, lengths are clipped to ``[0, T]``, n-gram sizes to ``[0, 16]``. A row left with no
finite logit gives id ``-1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import _dry
from agnostic_sampling.backends import _ngrams

_MASKS = ("allowed", "banned", "vocab_size", "no_repeat_ngram_size", "bad_words")
_PENALTIES = ("repetition_penalty", "frequency_penalty", "presence_penalty")


def present(params: SamplingParams) -> bool:
    """Whether ``params`` asks for any shaping step (static: depends on ``None``-ness only)."""
    return (params.logit_bias is not None or any(getattr(params, n) is not None for n in _MASKS)
            or _penalized(params) or (params.dry is not None and params.history is not None))


def _penalized(params: SamplingParams) -> bool:
    return params.history is not None and any(getattr(params, n) is not None for n in _PENALTIES)


def _rows_of(value: Any, batch_shape: tuple[int, ...], per_token: bool, xp: Any, dtype: Any = None) -> Any:
    """``value`` broadcast to the batch and flattened to ``(N,)``, or ``(N, W)`` when ``per_token``.

    With ``per_token`` the last axis, of width ``W``, runs over tokens, words or history positions.
    """
    array = xp.asarray(value) if dtype is None else xp.asarray(value, dtype=dtype)  # no copy if it fits
    if not per_token:
        return xp.reshape(xp.broadcast_to(array, batch_shape), (-1,))
    return xp.reshape(xp.broadcast_to(array, (*batch_shape, array.shape[-1])), (-1, array.shape[-1]))


def unpack_bits(words: Any, vocab: int, xp: Any) -> Any:
    """A packed bitmask ``(N, ceil(V / 32))`` of uint32 words as booleans ``(N, V)``."""
    if not hasattr(words, "at"):  # NumPy: unpackbits reads the words' bytes, lowest bit first
        little = words.astype("<u4", copy=False).view(xp.uint8)
        return xp.unpackbits(little, axis=-1, count=vocab, bitorder="little").view(bool)
    bits = (words[:, :, None] >> xp.arange(32, dtype=xp.uint32)) & xp.uint32(1)
    return xp.reshape(bits, (words.shape[0], -1))[:, :vocab] != 0


def _mask_rows(value: Any, batch_shape: tuple[int, ...], vocab: int, xp: Any) -> Any:
    rows = _rows_of(value, batch_shape, True, xp)
    return rows if rows.dtype == bool else unpack_bits(rows, vocab, xp)


def token_counts(history: Any, valid: Any, vocab: int, xp: Any) -> tuple[Any, Any]:
    """Each row's distinct tokens and their counts among its valid history entries.

    Returns ``(token, count)``, both ``(N, T)``: ``token`` is a distinct token at the first of its
    entries in sorted order and ``vocab`` elsewhere, ``count`` its number of entries there. One
    sort of each row's ``T`` ids (``O(N * T log T)``, no ``(N, V)`` or ``(N, T, V)`` array):
    on NumPy a scatter-add (``np.add.at``) is an order of magnitude slower.
    """
    ids = xp.sort(xp.where(valid, history, vocab), axis=1)
    n_rows, width = ids.shape
    changes = ids[:, 1:] != ids[:, :-1]
    edge = xp.ones((n_rows, 1), bool)
    first = xp.concatenate([edge, changes], axis=1)  # the first entry of a run of equal ids
    last = xp.concatenate([changes, edge], axis=1)
    position = xp.broadcast_to(xp.arange(width), ids.shape)
    run_start = xp.maximum.accumulate(xp.where(first, position, 0), axis=1)
    run_end = xp.flip(xp.minimum.accumulate(xp.flip(xp.where(last, position, width), axis=1), axis=1), axis=1)
    token = xp.where(first, ids, vocab)
    return token, run_end - run_start + 1


def _set_at(x: Any, token: Any, values: Any, xp: Any) -> Any:
    """``x`` with ``values`` written at ``(row, token)``; entries with ``token == V`` are skipped.

    Each row's tokens are distinct, so the writes never collide.
    """
    rows = xp.broadcast_to(xp.arange(x.shape[0])[:, None], token.shape)
    if hasattr(x, "at"):  # JAX: the entries past the row are dropped
        return x.at[rows, token].set(values, mode="drop", unique_indices=True)
    keep = token < x.shape[1]
    x.reshape(-1)[_flat_index(x, token)[keep]] = values[keep]
    return x


def _flat_index(x: Any, token: Any) -> Any:
    """``row * V + token`` into NumPy ``x`` ``(N, V)``, tokens past the row clamped to its last."""
    vocab = x.shape[1]
    return np.minimum(token, vocab - 1) + np.arange(x.shape[0])[:, None] * vocab


def _penalty_rows(params: SamplingParams, batch_shape: tuple[int, ...], xp: Any,
                  dtype: Any) -> tuple[Any, ...]:
    """The repetition, frequency and presence penalties per row, ``(N,)`` each or ``None``.

    The traced policy is applied: a repetition penalty that is not a finite number > 0 is 1, a NaN
    frequency or presence penalty 0.
    """
    r = f = p = None
    if params.repetition_penalty is not None:
        r = _rows_of(params.repetition_penalty, batch_shape, False, xp, dtype)
        r = xp.where((r > 0) & xp.isfinite(r), r, 1)
    if params.frequency_penalty is not None:
        f = _rows_of(params.frequency_penalty, batch_shape, False, xp, dtype)
        f = xp.where(xp.isnan(f), 0, f)
    if params.presence_penalty is not None:
        p = _rows_of(params.presence_penalty, batch_shape, False, xp, dtype)
        p = xp.where(xp.isnan(p), 0, p)
    return r, f, p


def _with_penalties(value: Any, repeated: Any, count: Any, penalties: tuple[Any, ...], xp: Any) -> Any:
    """``value`` with the penalties applied.

    The repetition penalty where ``repeated``, then ``count * frequency + presence`` subtracted
    where ``count > 0``.

    The one place of the penalties' arithmetic: the sparse path (a given history) and the decode
    loops' carried counts both call it, so the same counts give the same logits bit for bit.
    ``penalties`` are `_penalty_rows`'s, already broadcast against ``value``.
    """
    r, f, p = penalties
    if r is not None:
        select = xp.where if hasattr(value, "at") else _select
        value = xp.where(repeated, select(value > 0, value / r, value * r), value)
    if f is not None:
        # where, not a product alone: a count of 0 leaves the logit as it is even for f = inf
        value = xp.where(count > 0, value - count.astype(value.dtype) * f, value)
    if p is not None:
        value = xp.where(count > 0, value - p, value)
    return value


def _select(condition: Any, a: Any, b: Any) -> Any:
    """NumPy ``np.where(condition, a, b)`` for float ``a`` and ``b`` of one dtype, through their bits.

    The same values, without the branch per element that makes ``np.where`` ~7x slower on a
    condition that flips at random (the sign of a logit).
    """
    a, b, condition = np.broadcast_arrays(a, np.asarray(b, a.dtype), condition)
    bits = np.dtype(f"i{a.dtype.itemsize}")
    mask = np.negative(condition, dtype=bits)  # all ones where true
    out = np.bitwise_xor(a.view(bits), b.view(bits))
    out &= mask
    out ^= b.view(bits)
    return out.view(a.dtype)


def _column(penalties: tuple[Any, ...], index: Any = None) -> tuple[Any, ...]:
    """Per-row penalties as columns ``(N, 1)``, or taken at the rows ``index`` of flat entries.

    A penalty that every row shares is taken once, as one value, not once per entry.
    """
    def taken(v: Any) -> Any:
        if v is None:
            return None
        if index is None:
            return v[:, None]
        return v[:1] if v.size and bool((v == v[0]).all()) else v[index]

    return tuple(taken(v) for v in penalties)


def _history_rows(params: SamplingParams, batch_shape: tuple[int, ...], xp: Any) -> tuple[Any, Any]:
    """The history ``(N, T)`` and its valid lengths ``(N,)``, clipped to ``[0, T]``.

    An empty history when none is given.
    """
    n_rows = 1
    for size in batch_shape:
        n_rows *= size
    if params.history is None:
        return xp.full((n_rows, 1), -1), xp.zeros(n_rows, dtype=int)
    history = _rows_of(params.history, batch_shape, True, xp)
    width = history.shape[1]
    if params.history_lengths is None:
        return history, xp.full((n_rows,), width)
    return history, xp.clip(_rows_of(params.history_lengths, batch_shape, False, xp), 0, width)


def _apply_penalties(x: Any, params: SamplingParams, batch_shape: tuple[int, ...], xp: Any) -> Any:
    n_rows, vocab = x.shape
    history, lengths = _history_rows(params, batch_shape, xp)
    width = history.shape[1]
    valid = (history >= 0) & (history < vocab) & (xp.arange(width)[None, :] < lengths[:, None])
    token, count = token_counts(history, valid, vocab, xp)
    if hasattr(x, "at"):
        value = x[xp.arange(n_rows)[:, None], xp.minimum(token, vocab - 1)]
    else:  # the shaping's own C-ordered array: a flat take is ~3x faster than (row, token) pairs
        value = np.take(x.reshape(-1), _flat_index(x, token))
    penalties = _column(_penalty_rows(params, batch_shape, xp, x.dtype))
    value = _with_penalties(value, token < vocab, xp.where(token < vocab, count, 0), penalties, xp)
    return _set_at(x, token, value.astype(x.dtype), xp)


def penalize_counts(x: Any, repeated: Any, counts: Any, params: SamplingParams, xp: Any,
                    touched: Any = None, rows: Any = None) -> Any:
    """The penalties from counts carried by a decode loop.

    Args:
        x: ``(N, V)`` logits in compute precision (bias already added); on NumPy the loop's own
            C-ordered array, written in place.
        repeated: the counts of the repetition penalty's scope (``> 0``: penalised), or ``None``
            when that penalty is off: ``(N, V)`` on JAX, on NumPy aligned with ``touched``.
        counts: the counts of the frequency and presence penalties' scope, or ``None``; shaped
            like ``repeated``.
        params: the per-row penalties, broadcast to ``(N,)``.
        xp: ``numpy`` or ``jax.numpy``.
        touched: NumPy: the flat indices ``row * V + token`` of every entry whose count has been
            positive, so that only those are read and written (one pass over ``(N, V)`` per
            operation would cost ~3 ms each at 64 x 128256); JAX: ``None``, the elementwise
            operations fuse into one pass.
        rows: NumPy: the row of each entry of ``touched``.
    """
    penalties = _penalty_rows(params, (x.shape[0],), xp, x.dtype)
    if touched is None:
        hit = repeated > 0 if repeated is not None else None
        count = counts if counts is not None else xp.zeros((), xp.int32)
        return _with_penalties(x, hit, count, _column(penalties), xp).astype(x.dtype)
    flat = x.reshape(-1)
    hit = repeated > 0 if repeated is not None else None
    count = counts if counts is not None else np.zeros((), np.int32)
    flat[touched] = _with_penalties(np.take(flat, touched), hit, count, _column(penalties, rows), xp)
    return x


def union(a: Any, b: Any) -> Any:
    """``a | b`` where either may be ``None`` (nothing dropped)."""
    return b if a is None else a | b


def dropped(params: SamplingParams, batch_shape: tuple[int, ...], vocab: int, xp: Any,
            history: tuple[Any, Any] | None = None, masks: bool = True) -> Any:
    """The tokens the masks and the sequence bans remove, ``(N, V)`` boolean (None: none given).

    ``history``: ``(ids, lengths)`` for the sequence bans in place of ``params.history`` (the
    decode loops' own buffer). ``masks=False`` leaves out the masks (a NumPy decode loop bans
    those through `mask_bans`, found once).
    """
    drop = _masked(params, batch_shape, vocab, xp) if masks else None
    if params.no_repeat_ngram_size is not None or params.bad_words is not None:
        ids, lengths = _history_rows(params, batch_shape, xp) if history is None else history
        drop = union(drop, sequence_bans(ids, lengths, params, batch_shape, vocab, xp))
    return drop


def _masked(params: SamplingParams, batch_shape: tuple[int, ...], vocab: int, xp: Any) -> Any:
    """What ``allowed``, ``banned`` and ``vocab_size`` remove, ``(N, V)`` boolean (None: none given)."""
    drop = None
    if params.allowed is not None:
        drop = ~_mask_rows(params.allowed, batch_shape, vocab, xp)
    if params.banned is not None:
        drop = union(drop, _mask_rows(params.banned, batch_shape, vocab, xp))
    if params.vocab_size is not None:
        size = _rows_of(params.vocab_size, batch_shape, False, xp)
        drop = union(drop, xp.arange(vocab)[None, :] >= size[:, None])
    return drop


SPARSE_SHARE = 1 / 16  # a NumPy loop writes its masks and its bias through flat indices below this share


def _few(mask: Any) -> bool:
    """Whether ``mask`` is true on at most `SPARSE_SHARE` of its entries."""
    return np.count_nonzero(mask) <= SPARSE_SHARE * mask.size


def mask_bans(params: SamplingParams, batch: int, vocab: int) -> Any:
    """NumPy: what ``allowed``, ``banned`` and ``vocab_size`` remove, for `ban`, found once per decode.

    The flat indices ``row * V + token`` when they remove few tokens (a ban list: writing those
    costs a fraction of a pass over ``(B, V)``), else the ``(B, V)`` boolean (an allow list);
    ``None`` when no mask is given.
    """
    drop = _masked(params, (batch,), vocab, np)
    if drop is None or not _few(drop):
        return drop
    return np.flatnonzero(drop)


def bias_entries(params: SamplingParams, batch: int, vocab: int) -> Any:
    """NumPy: a dense ``logit_bias`` as flat ``(indices, values)`` of its nonzero entries, found once.

    For a decode loop, whose bias is the same at every position: when few entries are nonzero
    (at most `SPARSE_SHARE` of them, as a client's bias usually is), each step copies the logits
    and adds those entries alone, instead of reading the whole ``(B, V)`` bias again. ``None``
    when there is no dense bias or it has many nonzero entries (each step then adds it whole).
    """
    bias = params.logit_bias
    if bias is None or isinstance(bias, tuple):
        return None
    dense = np.broadcast_to(np.asarray(bias), (batch, vocab)).reshape(-1)
    nonzero = dense != 0  # x + 0 is x: a zero entry changes nothing
    if not _few(nonzero):
        return None
    indices = np.flatnonzero(nonzero)
    return indices, dense[indices]


def add_entries(x: Any, entries: Any) -> Any:
    """NumPy: a C-ordered copy of ``x`` plus the flat ``(indices, values)`` of `bias_entries`.

    The same sums as adding the dense bias: each index once, the value cast to ``x``'s dtype.
    """
    indices, values = entries
    x = np.positive(x, order="C")
    x.reshape(-1)[indices] += values.astype(x.dtype)
    return x


def ban(x: Any, drop: Any, xp: Any) -> Any:
    """``x`` with ``-inf`` where ``drop``; on NumPy written in place (``x`` is the shaping's own).

    ``drop``: a boolean like ``x``, or on NumPy the flat indices of the entries (`mask_bans`).
    """
    if drop is None:
        return x
    if hasattr(x, "at"):
        return xp.where(drop, xp.asarray(-xp.inf, x.dtype), x)
    if drop.dtype == bool:
        xp.copyto(x, -xp.inf, where=drop)
    else:  # flat indices (`mask_bans`)
        x.reshape(-1)[drop] = -xp.inf
    return x


def sequence_bans(history: Any, lengths: Any, params: SamplingParams, batch_shape: tuple[int, ...],
                  vocab: int, xp: Any) -> Any:
    """The no-repeat n-gram and bad-word bans as a boolean ``(N, V)`` (`_ngrams`)."""
    banned = []
    if params.no_repeat_ngram_size is not None:
        size = _rows_of(params.no_repeat_ngram_size, batch_shape, False, xp)
        banned.append(_ngrams.ngram_bans(history, lengths, size, vocab, xp))
    if params.bad_words is not None:
        words = xp.asarray(params.bad_words)
        n_rows = history.shape[0]
        per_row = (*batch_shape, *words.shape[-2:])
        words = xp.reshape(xp.broadcast_to(words, per_row), (n_rows, *words.shape[-2:]))
        banned.append(_ngrams.bad_word_bans(history, lengths, words, vocab, xp))
    return _ngrams.banned_mask(xp.concatenate(banned, axis=1), vocab, xp)


def add_bias(x: Any, bias: Any, batch_shape: tuple[int, ...], xp: Any) -> Any:
    """``x`` plus the bias, dense ``(..., V)`` or sparse ``(ids, values)``.

    Sparse ids and values have shape ``(..., M)`` each (ids ``-1`` are padding; an id given twice
    in a row gets both values). A new array on NumPy even without a bias, so the steps after it
    may write in place.
    """
    if bias is None:
        return x if hasattr(x, "at") else np.array(x, order="C")
    if not isinstance(bias, tuple):
        if hasattr(x, "at"):
            return x + _rows_of(bias, batch_shape, True, xp, x.dtype)
        # C order whatever the input's layout: the later steps write through flat indices
        return np.add(x, _rows_of(bias, batch_shape, True, xp, x.dtype), order="C")
    ids, values = (_rows_of(part, batch_shape, True, xp) for part in bias)
    ids, values = xp.broadcast_arrays(ids, values)
    values = values.astype(x.dtype)
    n_rows, vocab = x.shape
    rows = xp.broadcast_to(xp.arange(n_rows)[:, None], ids.shape)
    valid = (ids >= 0) & (ids < vocab)
    if hasattr(x, "at"):  # JAX: an id past the row is dropped (never a negative one: it would wrap)
        return x.at[rows, xp.where(valid, ids, vocab)].add(values, mode="drop")
    x = np.array(x, order="C")
    xp.add.at(x, (rows[valid], ids[valid]), values[valid])  # duplicates add up
    return x


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
    x = add_bias(x, params.logit_bias, batch_shape, xp)
    if _penalized(params):
        x = _apply_penalties(x, params, batch_shape, xp)
    if params.dry is not None and params.history is not None:
        x = _dry.apply(x, *_history_rows(params, batch_shape, xp), params.dry, batch_shape, xp)
    return ban(x, dropped(params, batch_shape, vocab, xp), xp)
