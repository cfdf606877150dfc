"""Checks on logits shared by the public functions and the decode loops.

`check_logits` looks at metadata only (dtype and shape, no pass over the values);
`raise_bad_rows` turns the per-row status codes that every backend function returns into the
error the user sees. The decode loops call the backend modules directly, so they report bad
rows through the same two functions as ``sample`` and ``process_logits``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling.backends import ROW_NAN
from agnostic_sampling.backends import ROW_NO_FINITE
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import ROW_POSINF

__all__ = ["check_logits", "raise_bad_rows"]

_ROW_PROBLEMS = {
    ROW_NAN: "contains NaN; logits must be finite or -inf",
    ROW_POSINF: "contains +inf; logits must be finite or -inf",
    ROW_NO_FINITE: "has no finite logit, so there is nothing to sample",
}


def check_logits(array: Any) -> None:
    """Raise unless ``array`` is a floating-point array of shape ``(..., V)`` with ``V >= 1``."""
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"):
        raise TypeError(f"logits must be a floating-point array, got dtype {dtype}")
    if array.ndim == 0:
        raise ValueError("logits must have at least one dimension (..., V), got a scalar")
    if array.shape[-1] == 0:
        raise ValueError(f"logits must have a vocabulary of at least one token, got shape {array.shape}")


def raise_bad_rows(status: Any, shape: tuple[int, ...], *, shaped: bool = False) -> None:
    """Report the first bad row of a concrete status array (skipped under tracing).

    Args:
        status: the per-row codes a backend function returned, shape ``shape[:-1]``.
        shape: the logits' shape, to name the row.
        shaped: the logits went through logit shaping (bias, penalties, masks), which can
            leave a row with no finite logit; the message then says so.

    Raises:
        ValueError: naming the first row whose status is not ``ROW_OK`` and what is wrong with it.
    """
    if is_tracer(status):
        return
    status = np.asarray(status)
    if not status.any():
        return
    flat = int(np.argmax(status.reshape(-1) != ROW_OK))
    code = int(status.reshape(-1)[flat])
    batch = shape[:-1]
    row = np.unravel_index(flat, batch) if batch else ()
    if len(row) > 1:
        where = f"row {tuple(int(i) for i in row)}"
    else:
        where = f"row {int(row[0])}" if row else "the logits"
    problem = _ROW_PROBLEMS[code]
    if shaped and code == ROW_NO_FINITE:
        problem = "has no finite logit after logit_bias, penalties and allowed/banned/vocab_size masks"
    elif shaped:
        problem += " (after logit_bias and penalties: a bias must be finite or -inf)"
    raise ValueError(f"logits {where} {problem}")
