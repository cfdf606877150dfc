"""Bans that look at the history's sequences, written once for NumPy and JAX arrays.

Both follow Hugging Face's processors of the same names, on a history ``(N, T)`` whose first
``L`` entries are valid (the prompt and what was generated, in order):

- **No-repeat n-gram** of size ``n``: a token that would complete an n-gram already in the
  history is banned. With ``s`` the last ``n - 1`` tokens, every start ``i`` with
  ``i + n - 1 < L`` and ``history[i:i + n - 1] == s`` bans ``history[i + n - 1]`` (``n == 1``
  bans every token of the history; ``n == 0`` disables the step). ``n`` is per row and traced,
  up to `NGRAM_MAX`: each of the ``n - 1`` comparisons is one pass over ``(N, T)``.
- **Bad words**: sequences ``(W, M)`` (or ``(N, W, M)``), right-padded with ``-1``. A sequence of
  ``m`` ids bans its last id when the history ends with its first ``m - 1`` (a one-id sequence
  is always banned).

Each function returns the banned tokens as ``(N, K)`` ids, ``V`` where nothing is banned, for
`banned_mask` to scatter into a boolean ``(N, V)``.
"""

from __future__ import annotations

from typing import Any

from agnostic_sampling._params import NGRAM_MAX

__all__ = ["bad_word_bans", "banned_mask", "ngram_bans"]


def _shifted(history: Any, j: int, xp: Any) -> Any:
    """``history[:, i + j]`` at every ``i``, with ``-2`` (no id) past the end."""
    if j == 0:
        return history
    tail = xp.full((history.shape[0], j), -2, history.dtype)
    return xp.concatenate([history[:, j:], tail], axis=1)


def _at(history: Any, index: Any, xp: Any) -> Any:
    """``history[row, index[row, k]]`` for ``index`` ``(N, K)``, ``-2`` where out of range."""
    width = history.shape[1]
    inside = (index >= 0) & (index < width)
    values = xp.take_along_axis(history, xp.clip(index, 0, width - 1), axis=1)
    return xp.where(inside, values, -2)


def ngram_bans(history: Any, lengths: Any, size: Any, vocab: int, xp: Any) -> Any:
    """The tokens that would repeat an n-gram, ``(N, T)`` (``vocab`` where none).

    Args:
        history: ``(N, T)`` ids; ``lengths``: ``(N,)`` valid entries; ``size``: ``(N,)`` n-gram
            sizes (0 disables, values above `NGRAM_MAX` are treated as `NGRAM_MAX`).
        lengths: ``(N,)`` integers.
        size: ``(N,)`` integers.
        vocab: ``V``.
        xp: ``numpy`` or ``jax.numpy``.
    """
    width = history.shape[1]
    size = xp.clip(size, 0, NGRAM_MAX)[:, None]
    lengths = lengths[:, None]
    start = xp.arange(width)[None, :]
    ok = (size >= 1) & (start + size - 1 < lengths)
    # static on NumPy: the largest size given; on JAX every comparison up to NGRAM_MAX
    longest = NGRAM_MAX if hasattr(history, "at") else int(size.max(initial=0))
    for j in range(max(min(longest, width) - 1, 0)):  # an n-gram longer than the history bans nothing
        active = j < size - 1
        suffix = _at(history, lengths - size + 1 + j, xp)  # (N, 1): the j-th of the last n - 1
        ok = ok & (~active | (_shifted(history, j, xp) == suffix))
    completing = _at(history, start + size - 1, xp)
    return xp.where(ok & (completing >= 0), completing, vocab)


def bad_word_bans(history: Any, lengths: Any, words: Any, vocab: int, xp: Any) -> Any:
    """The last id of every bad word whose other ids end the history, ``(N, W)``.

    ``vocab`` where none.

    Args:
        history: ``(N, T)`` ids.
        lengths: ``(N,)`` valid entries.
        words: ``(N, W, M)`` ids, right-padded with ``-1``.
        vocab: ``V``.
        xp: ``numpy`` or ``jax.numpy``.
    """
    n_rows, count, width = words.shape
    size = xp.sum(words >= 0, axis=-1)  # (N, W): ids in each sequence
    last = xp.take_along_axis(words, xp.maximum(size - 1, 0)[:, :, None], axis=2)[:, :, 0]
    lengths = lengths[:, None]
    ok = (size >= 1) & (lengths >= size - 1)
    for j in range(width - 1):
        active = j < size - 1
        seen = _at(history, lengths - (size - 1) + j, xp)  # (N, W)
        ok = ok & (~active | (seen == words[:, :, j]))
    return xp.where(ok & (last >= 0), last, vocab)


def banned_mask(tokens: Any, vocab: int, xp: Any) -> Any:
    """A boolean ``(N, V)``, true at ``(row, tokens[row, k])``; entries equal to ``V`` are skipped."""
    n_rows = tokens.shape[0]
    rows = xp.broadcast_to(xp.arange(n_rows)[:, None], tokens.shape)
    if hasattr(tokens, "at"):
        return xp.zeros((n_rows, vocab), bool).at[rows, tokens].set(True, mode="drop")
    mask = xp.zeros((n_rows, vocab + 1), bool)
    mask[rows, tokens] = True
    return mask[:, :vocab]
