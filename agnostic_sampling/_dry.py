"""DRY ("don't repeat yourself"), llama.cpp's sequence-repetition penalty: its parameters and checks.

A logit-shaping step over the history (README "Logit shaping"). For a row whose history, within
its last ``last_n`` tokens, ends with a sequence that occurred earlier, the token that followed
the earlier occurrence would extend the repetition; it is penalised by how long the repeated
sequence already is. With ``n`` the length of the longest such match for a token ``t``::

    logit[t] -= multiplier * base ** min(n - allowed_length, E)    where n >= allowed_length

``E = floor(88.7228391 / ln(base))`` (the float32 overflow clamp of llama.cpp; no clamp for
``base <= 1.000001``). A match stops at a sequence breaker: a breaker id never takes part in a
match, and a breaker is never penalised itself. The array code is `backends._dry`; the float64
definition is `stats.reference_probs` with ``dry=``.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._dispatch import is_tracer

__all__ = ["Dry", "check_dry"]


class Dry(NamedTuple):
    """DRY's parameters, each a scalar or per row (``breakers``: ids ``(S,)`` or ``(..., S)``).

    Pass it as ``dry=`` with a ``history=`` (or in a decode loop, which supplies the history:
    prompt and generated tokens). A pytree on JAX: every value is traced.

    Attributes:
        multiplier: the penalty's scale; ``0`` disables DRY for the row (llama.cpp's
            ``dry_multiplier``).
        base: the growth per extra repeated token, ``>= 1`` (``dry_base``).
        allowed_length: the longest match left unpenalised, ``>= 1`` (``dry_allowed_length``).
        last_n: how many of the history's last tokens are searched; ``-1`` all of them, ``0``
            disables DRY for the row (``dry_penalty_last_n``).
        breakers: token ids that end a match, right-padded with ``-1`` (llama.cpp takes strings
            such as a newline and tokenises them; here they are the ids themselves).

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> history = np.array([5, 1, 2, 3, 4, 1, 2, 3])  # "1 2 3" repeats: 4 would continue it
        >>> z = smp.process_logits(np.zeros(6, np.float32), history=history,
        ...                        dry=smp.Dry(multiplier=0.8, base=1.75, allowed_length=2))
        >>> np.round(z, 2).tolist()  # 0.8 * 1.75 ** (3 - 2) off token 4
        [0.0, 0.0, 0.0, 0.0, -1.4, 0.0]
    """

    multiplier: Any
    base: Any = 1.75
    allowed_length: Any = 2
    last_n: Any = -1
    breakers: Any = None


def _as_array(value: Any) -> Any:
    return value if hasattr(value, "dtype") else np.asarray(value)


def _per_row(name: str, value: Any, batch_shape: tuple[int, ...], integer: bool) -> Any:
    """``value`` as an array that broadcasts to the batch, of the right kind of number."""
    from agnostic_sampling._params import _per_row_shape

    array = _as_array(value)
    dtype = np.dtype(array.dtype)
    if integer and dtype.kind not in "iu":
        raise TypeError(f"dry.{name} must be an integer, got dtype {dtype}")
    if not integer and dtype.kind not in "iuf" and dtype.name != "bfloat16":
        raise TypeError(f"dry.{name} must be a real number, got dtype {dtype}")
    _per_row_shape(f"dry.{name}", array, batch_shape)
    return array


def check_dry(dry: Any, batch_shape: tuple[int, ...], vocab: int | None, history_given: bool) -> None:
    """Check ``dry=`` eagerly: its type, shapes, dtypes, and its values where they are concrete.

    Raises:
        TypeError: ``dry`` is not a `Dry`, or a field has the wrong kind of number.
        ValueError: no history, a shape that does not broadcast to the batch, a multiplier that is
            not a finite number >= 0, a base not finite >= 1, an allowed length < 1, a last_n
            < -1, a breaker id outside ``[0, V)`` other than the padding ``-1``.
    """
    from agnostic_sampling._params import _first
    from agnostic_sampling._params import _vector_shape

    if not isinstance(dry, Dry):
        raise TypeError(f"dry must be a smp.Dry(multiplier, base, allowed_length, last_n, breakers), "
                        f"got {type(dry).__name__}")
    if not history_given:
        raise ValueError("dry needs history= (the token ids whose repeated sequences are penalised)")
    rules = {"multiplier": (False, lambda a: ~(np.isfinite(a) & (a >= 0)),
                            "a finite number >= 0 (0 disables it)"),
             "base": (False, lambda a: ~(np.isfinite(a) & (a >= 1)), "a finite number >= 1"),
             "allowed_length": (True, lambda a: a < 1, "an integer >= 1"),
             "last_n": (True, lambda a: a < -1, "an integer >= -1 (-1: the whole history, 0 disables it)")}
    for name, (integer, bad_of, allowed) in rules.items():
        array = _per_row(name, getattr(dry, name), batch_shape, integer)
        if not is_tracer(array):
            concrete = np.asarray(array, np.int64 if integer else np.float64)
            bad = bad_of(concrete)
            if bad.any():
                raise ValueError(f"dry.{name} must be {allowed}, got {_first(concrete, bad)}")
    if dry.breakers is None:
        return
    breakers = _as_array(dry.breakers)
    if not np.issubdtype(np.dtype(breakers.dtype), np.integer) or np.dtype(breakers.dtype) == bool:
        raise TypeError(f"dry.breakers must be token ids (S,) or (..., S), got dtype {breakers.dtype}")
    _vector_shape("dry.breakers", breakers, batch_shape, None)
    if not is_tracer(breakers):
        concrete = np.asarray(breakers)
        bad = (concrete < -1) | (concrete >= (np.iinfo(np.int64).max if vocab is None else vocab))
        if bad.any():
            raise ValueError(f"dry.breakers ids must be in [0, {vocab}) or -1 (padding), "
                             f"got {_first(concrete, bad)}")
