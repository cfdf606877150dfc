"""The penalties' counts a NumPy decode loop carries: compact, over the entries they touch.

A ``(B, V)`` count array would cost a pass over the logits' size for every operation on it (~3 ms
at 64 x 128256), and the penalties change only the entries whose count has been positive: the
tokens of each row's history, a few thousand of its ``V``. So the loop keeps, for those entries
alone, their flat indices ``row * V + token`` (``touched``, ascending for the prompt's, then in
the order later tokens first appeared), their rows, and their counts in each scope a penalty
uses (``all``, ``output``). A flat slot map ``(B * V,)`` finds an entering token's entry in
``O(1)``, so a step's update is ``O(B)``: a new entry is appended to buffers that grow by
doubling, never inserted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CompactCounts"]


class CompactCounts:
    """Counts of the entries a decode loop's history touched (NumPy; mutable, owned by one loop).

    ``all`` and ``output``: ``int32`` counts aligned with ``touched`` (``None`` for a scope no
    penalty uses); ``rows``: each entry's row. An entry stays listed when its count falls back
    to 0 (a window): a count of 0 is no penalty.

    >>> ids = np.array([[3, 1, 3], [0, 0, 2]])
    >>> counts = CompactCounts.from_ids(ids, np.ones_like(ids, bool), None, vocab=4)
    >>> counts.touched.tolist(), counts.all.tolist()
    ([1, 3, 4, 6], [1, 2, 2, 1])
    >>> counts.add(np.array([2, 0]), np.array([1, 1]), None)
    >>> counts.touched.tolist(), counts.all.tolist()
    ([1, 3, 4, 6, 2], [1, 2, 3, 1, 1])
    """

    def __init__(self, touched: Any, counts: list[Any], n_rows: int, vocab: int) -> None:
        self.vocab = vocab
        self._size = touched.size
        self._touched = touched.astype(np.int64)
        self._rows = self._touched // vocab
        self._counts = counts
        self._slot = np.full(n_rows * vocab, -1, np.int32 if n_rows * vocab < 2**31 else np.int64)
        self._slot[touched] = np.arange(touched.size)

    @classmethod
    def from_ids(cls, ids: Any, included: Any, output: Any, vocab: int) -> CompactCounts:
        """The counts of ``ids`` ``(B, T)`` where ``included`` (scope all) and where ``output``.

        Either mask may be ``None``: that scope is not carried. Ids outside ``[0, V)`` are
        skipped.
        """
        keys = [None if where is None else _sorted_keys(ids, where, vocab) for where in (included, output)]
        widest = keys[0] if keys[0] is not None else keys[1]  # all covers output
        first = np.ones(widest.size, bool)
        np.not_equal(widest[1:], widest[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        touched = widest[starts]
        runs = np.diff(starts, append=widest.size).astype(np.int32)  # the widest scope's counts
        counts = [runs if key is widest else None if key is None else
                  np.bincount(np.searchsorted(touched, key), minlength=touched.size).astype(np.int32)
                  for key in keys]
        return cls(touched, counts, ids.shape[0], vocab)

    @property
    def touched(self) -> Any:
        return self._touched[:self._size]

    @property
    def rows(self) -> Any:
        return self._rows[:self._size]

    @property
    def all(self) -> Any:
        return None if self._counts[0] is None else self._counts[0][:self._size]

    @property
    def output(self) -> Any:
        return None if self._counts[1] is None else self._counts[1][:self._size]

    def add(self, tokens: Any, weight_all: Any, weight_output: Any) -> None:
        """Add ``weight_all[row]`` / ``weight_output[row]`` at ``(row, tokens[row])``, in place.

        One token per row (``(B,)`` each; a weight ``None`` for a scope not carried); ids outside
        ``[0, V)`` are skipped. An entry not yet listed joins when its weight is positive.
        """
        vocab = self.vocab
        row = np.flatnonzero((tokens >= 0) & (tokens < vocab))  # one entry per row: no two meet
        flat = row * vocab + tokens[row]
        place = self._slot[flat].astype(np.int64)
        widest = weight_all if weight_all is not None else weight_output
        new = (place < 0) & (widest[row] > 0)
        if new.any():
            place[new] = self._append(flat[new], row[new])
        listed = place >= 0  # an entry never listed has no count to change
        place, row = place[listed], row[listed]
        for counts, weight in zip(self._counts, (weight_all, weight_output), strict=True):
            if counts is not None:
                counts[place] += weight[row].astype(np.int32)

    def _append(self, flat: Any, row: Any) -> Any:
        """List new entries (count 0 in every scope); their places."""
        end = self._size + flat.size
        if end > self._touched.size:
            capacity = max(2 * self._touched.size, end, 64)
            self._touched, self._rows = (_grown(a, capacity) for a in (self._touched, self._rows))
            self._counts = [None if c is None else _grown(c, capacity) for c in self._counts]
        place = np.arange(self._size, end)
        self._touched[place], self._rows[place] = flat, row
        for counts in self._counts:
            if counts is not None:
                counts[place] = 0
        self._slot[flat] = place
        self._size = end
        return place


def _grown(array: Any, capacity: int) -> Any:
    out = np.empty(capacity, array.dtype)
    out[:array.size] = array
    return out


def _sorted_keys(ids: Any, where: Any, vocab: int) -> Any:
    """The flat indices ``row * V + id`` of the valid ``ids`` where ``where``, in ascending order.

    Each row's ``T`` ids are sorted on their own (cheaper than one sort of all ``B * T``).
    """
    beyond = np.iinfo(np.int64).max  # what a skipped id sorts as: past every row
    flat = np.arange(ids.shape[0])[:, None] * vocab + ids
    keys = np.where(where & (ids >= 0) & (ids < vocab), flat, beyond)
    keys = np.sort(keys, axis=1).reshape(-1)
    return keys[keys != beyond]
