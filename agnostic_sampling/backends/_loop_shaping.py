"""Logit shaping inside the decode loops, written once for NumPy and JAX arrays.

A decode loop knows each row's history (its prompt, then what it generated), so it supplies the
penalties' counts itself and carries them from position to position: ``(B, V)`` integer counts,
one array per scope the penalties need, counted once from the prompt before the loop and then
updated by the one token that enters (and, with a window, the one that leaves) at each position,
``O(B)`` work. At the position whose logits are being sampled, ``shape_step`` adds the bias, applies
the penalties from those counts (through the same arithmetic as a given ``history``), DRY, the
n-gram and bad-word bans over the ids so far, the EOS ban while a row has generated fewer than
``min_tokens``, and the masks (``allowed``, ``banned``, ``vocab_size``), all in one array; the
backend's ``sample`` then gets the parameters without the shaping.

Scopes: ``"all"`` counts every position of the row up to the current one (prompt and output),
``"output"`` only its generated positions (at or past its prompt length). A window of ``N`` keeps
the last ``N`` positions of the row, prompt or output.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._params import SHAPING_FIELDS
from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends import _dry
from agnostic_sampling.backends import _shaping
from agnostic_sampling.backends._numpy_counts import CompactCounts

__all__ = ["LoopShaping", "Counts", "initial_counts", "advance_counts", "shape_step", "sampling_params"]


class LoopShaping(NamedTuple):
    """What a decode loop's shaping needs to know statically (hashable: a static argument on JAX)."""

    repetition_scope: str | None  # "all", "output", or None: no repetition penalty
    frequency_scope: str | None  # the frequency and presence penalties' scope, or None
    window: int | None  # count only the last `window` positions; None: every position
    eos_ids: tuple[int, ...]  # banned while a row has generated fewer than min_tokens
    min_tokens: bool  # whether min_tokens was given
    sequences: bool  # whether no_repeat_ngram_size, bad_words or dry was given (over the ids so far)


class Counts(NamedTuple):
    """The carried counts, ``(B, V)`` int32 each, ``None`` for a scope no penalty uses (JAX).

    On NumPy a loop carries `_numpy_counts.CompactCounts` instead: the same two fields over the
    entries the history touched, with their flat indices and rows (JAX's elementwise penalties
    fuse into one pass, so it carries the whole rows).
    """

    all: Any
    output: Any


def _scopes(config: LoopShaping) -> tuple[bool, bool]:
    needed = {config.repetition_scope, config.frequency_scope}
    return "all" in needed, "output" in needed


def _add(counts: Any, tokens: Any, weight: Any, xp: Any) -> Any:
    """``counts`` plus ``weight`` at ``(row, tokens[row])`` for one token per row.

    Ids outside ``[0, V)`` (a padding id such as ``-1``) are skipped.
    """
    n_rows, vocab = counts.shape
    valid = (tokens >= 0) & (tokens < vocab)
    if hasattr(counts, "at"):  # JAX: an id past the row is dropped (never a negative: it would wrap)
        return counts.at[xp.arange(n_rows), xp.where(valid, tokens, vocab)].add(
            weight.astype(counts.dtype), mode="drop")
    rows = xp.flatnonzero(valid)  # one entry per row: no two updates meet
    counts[rows, tokens[rows]] += weight[rows].astype(counts.dtype)
    return counts


def _count(ids: Any, included: Any, vocab: int, xp: Any) -> Any:
    """``(B, V)`` counts of ``ids`` ``(B, T)`` where ``included`` (once, before the loop)."""
    n_rows, width = ids.shape
    included = included & (ids >= 0) & (ids < vocab)
    if hasattr(ids, "at"):
        rows = xp.broadcast_to(xp.arange(n_rows)[:, None], ids.shape)
        return xp.zeros((n_rows, vocab), xp.int32).at[rows, xp.where(included, ids, vocab)].add(
            included.astype(xp.int32), mode="drop")
    flat = (xp.arange(n_rows)[:, None] * vocab + ids)[included]
    return xp.bincount(flat, minlength=n_rows * vocab).reshape(n_rows, vocab).astype(xp.int32)


def initial_counts(config: LoopShaping, ids: Any, lengths: Any, start: Any, vocab: int,
                   xp: Any) -> Counts | CompactCounts:
    """The counts before the loop's first iteration ``start``: positions ``[start - N, start)``.

    Args:
        config: the loop's shaping.
        ids: ``(B, total)`` the loop's buffer (prompts, then padding).
        lengths: ``(B,)`` prompt lengths (positions at or past them are output).
        start: the first iteration (positions before it are counted here; it may be traced).
        vocab: ``V``.
        xp: ``numpy`` or ``jax.numpy``.
    """
    need_all, need_output = _scopes(config)
    position = xp.arange(ids.shape[1])[None, :]
    included = position < start
    if config.window is not None:
        included = included & (position >= start - config.window)
    output = included & (position >= lengths[:, None])
    if not hasattr(ids, "at") and (need_all or need_output):
        return CompactCounts.from_ids(ids, included if need_all else None, output if need_output else None,
                                      vocab)
    counts_all = _count(ids, included, vocab, xp) if need_all else None
    counts_output = _count(ids, output, vocab, xp) if need_output else None
    return Counts(counts_all, counts_output)


def advance_counts(config: LoopShaping, counts: Counts | CompactCounts, ids: Any, lengths: Any, t: Any,
                   xp: Any) -> Counts | CompactCounts:
    """The counts at iteration ``t``, in ``O(B)`` work.

    Position ``t`` enters (its token is final by then), and with a window of ``N`` position
    ``t - N`` leaves. ``ids`` is the loop's ``(B, total)`` buffer; ``t`` may be traced.
    """
    if counts.all is None and counts.output is None:  # no penalty: nothing is counted
        return counts
    n_rows = ids.shape[0]
    ones = xp.ones(n_rows, xp.int32)
    entering = _column(ids, t, xp)
    is_output = t >= lengths
    leaving = None
    if config.window is not None:
        old = t - config.window
        leaving = xp.where(old >= 0, _column(ids, xp.maximum(old, 0), xp), -1)
        old_is_output = old >= lengths
    if isinstance(counts, CompactCounts):  # NumPy: updated in place
        need_all, need_output = _scopes(config)
        counts.add(entering, ones if need_all else None, is_output.astype(np.int32) if need_output else None)
        if leaving is not None:
            counts.add(leaving, -ones if need_all else None,
                       -old_is_output.astype(np.int32) if need_output else None)
        return counts
    counts_all, counts_output = counts.all, counts.output
    if counts_all is not None:
        counts_all = _add(counts_all, entering, ones, xp)
        if leaving is not None:
            counts_all = _add(counts_all, leaving, -ones, xp)
    if counts_output is not None:
        counts_output = _add(counts_output, entering, is_output.astype(xp.int32), xp)
        if leaving is not None:
            counts_output = _add(counts_output, leaving, -old_is_output.astype(xp.int32), xp)
    return Counts(counts_all, counts_output)


def _column(ids: Any, t: Any, xp: Any) -> Any:
    if hasattr(ids, "at"):
        from jax import lax

        return lax.dynamic_index_in_dim(ids, t, axis=1, keepdims=False)
    return ids[:, t]


def shape_step(config: LoopShaping, x: Any, counts: Counts | CompactCounts, generated: Any, min_tokens: Any,
               params: SamplingParams, xp: Any, ids: Any = None, t: Any = None, bans: Any = None,
               bias: Any = None) -> Any:
    """One position's logits ``(B, V)`` with every shaping step and ``min_tokens`` applied.

    In compute precision, in a new array (``x`` is not written).

    Args:
        config: the loop's shaping.
        x: ``(B, V)`` the model's logits at this position.
        counts: the carried counts (`advance_counts` at this iteration).
        generated: ``(B,)`` tokens each row has generated so far.
        min_tokens: ``(B,)`` integers, or ``None``.
        params: the per-row parameters, each broadcast to ``(B,)`` (or ``(B, V)`` for the bias).
        xp: ``numpy`` or ``jax.numpy``.
        ids: ``(B, total)`` the loop's buffer, for the sequence bans (positions ``0 .. t``).
        t: the current position.
        bans: NumPy: `_shaping.mask_bans` of ``params``, found once by the loop (the masks are
            the same at every position); ``None``: the masks are read here.
        bias: NumPy: `_shaping.bias_entries` of ``params``, found once by the loop (then the
            dense bias is not read); ``None``: the bias is read here.
    """
    batch = (x.shape[0],)
    if bias is not None:
        x = _shaping.add_entries(x, bias)
    else:
        x = _shaping.add_bias(x, params.logit_bias, batch, xp)  # NumPy: a C-ordered copy, bias or not
    scope = {"all": counts.all, "output": counts.output, None: None}
    if config.repetition_scope is not None or config.frequency_scope is not None:
        compact = isinstance(counts, CompactCounts)
        x = _shaping.penalize_counts(x, scope[config.repetition_scope], scope[config.frequency_scope],
                                     params, xp, counts.touched if compact else None,
                                     counts.rows if compact else None)
    history = (ids, xp.full((x.shape[0],), t + 1)) if config.sequences else None  # positions 0 .. t
    if params.dry is not None:
        x = _dry.apply(x, *history, params.dry, batch, xp)
    # the masks (unless found once, in bans) and the sequence bans
    drop = _shaping.dropped(params, batch, x.shape[1], xp, history, masks=bans is None)
    eos_ids = [i for i in config.eos_ids if 0 <= i < x.shape[1]]  # static: V is known here
    if config.min_tokens and eos_ids:
        early = (generated < min_tokens)[:, None]
        drop = _shaping.union(drop, early & xp.isin(xp.arange(x.shape[1]), xp.asarray(eos_ids))[None, :])
    if bans is not None:
        x = _shaping.ban(x, bans, xp)
    return _shaping.ban(x, drop, xp)


def sampling_params(params: SamplingParams) -> SamplingParams:
    """``params`` without the shaping, which `shape_step` applies, for the backend's ``sample``.

    Built field by field without ``__post_init__``, so traced values pass through as they are.
    """
    out = object.__new__(SamplingParams)
    for field in dataclasses.fields(SamplingParams):
        shaping = field.name in SHAPING_FIELDS
        object.__setattr__(out, field.name, None if shaping else getattr(params, field.name))
    return out
