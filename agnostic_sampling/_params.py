"""`SamplingParams` and the validation of every sampling parameter.

Validation is pure Python and NumPy on *concrete* values. Traced JAX values cannot be inspected;
they pass through unchanged and the JAX backend applies the traced policy of SPEC section 4
(clip, treat as disabled, treat as greedy).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from agnostic_sampling._dispatch import is_tracer

__all__ = ["FIELDS", "OFF", "SamplingParams", "register_pytree", "resolve_params", "validate_params"]

# The value that turns each step off for one row (``None`` turns it off for every row). The one
# table of these values: backends, the oracle, the CLI and the benchmarks all read it.
OFF: dict[str, float | int] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "min_keep": 1}
_registered = False


def register_pytree() -> None:
    """Register `SamplingParams` as a JAX pytree (once; needs only ``jax.tree_util``).

    Values are traced data; which fields are ``None`` is static (``None`` is an empty pytree).
    """
    global _registered
    if not _registered:
        import jax.tree_util

        names = [field.name for field in dataclasses.fields(SamplingParams)]
        jax.tree_util.register_dataclass(SamplingParams, data_fields=names, meta_fields=[])
        _registered = True


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The sampling parameters, as one value that can be stored, passed around and traced.

    Every field is a Python scalar or an array broadcastable to the batch shape
    ``logits.shape[:-1]``, so one call can mix greedy, hot, top-k and nucleus rows. ``None``
    disables a step for every row; the identity values (``temperature=1``, ``top_k=0``,
    ``top_p=1``, ``min_p=0``) disable it for one row. ``temperature=0`` makes a row greedy.

    On the JAX backend this class is a pytree (registered once JAX is imported): the
    values are traced data, so new values never recompile; which fields are ``None`` is static.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> params = smp.SamplingParams(temperature=0.8, top_k=50, top_p=np.array([0.9, 1.0]))
        >>> int(smp.sample(0, np.zeros((2, 100), np.float32), params=params).shape[0])
        2
    """

    temperature: Any = 1.0
    top_k: Any = None
    top_p: Any = None
    min_p: Any = None
    min_keep: Any = 1

    def __post_init__(self) -> None:
        # Once JAX is in use, register this class as a pytree, so that params can go into
        # jax.jit before any JAX array has passed through the package.
        if not _registered and "jax" in sys.modules:
            register_pytree()


_DEFAULTS = SamplingParams()
FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


def _is_default(name: str, value: Any) -> bool:
    default = getattr(_DEFAULTS, name)
    if value is None or default is None:
        return value is default
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == default


def resolve_params(params: SamplingParams | None, **keywords: Any) -> SamplingParams:
    """Merge the two spellings (``params=`` or keywords) into one `SamplingParams`."""
    if params is None:
        return SamplingParams(**keywords)
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
    given = [name for name, value in keywords.items() if not _is_default(name, value)]
    if given:
        raise TypeError(
            f"pass either params= or sampling keywords, not both: got params and {', '.join(given)}"
        )
    return params


def _where(bad: np.ndarray) -> str:
    """Human-readable position of the first True entry of a per-row mask (at least 1-D)."""
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f" at row {first[0] if len(first) == 1 else first}"


def _format(value: Any) -> str:
    return repr(value.item()) if isinstance(value, np.generic) else repr(value)


def _first(array: np.ndarray, bad: np.ndarray) -> str:
    """The first offending value and where it is, for an error message."""
    if bad.ndim == 0:
        return _format(array[()])
    return _format(array[np.unravel_index(int(np.argmax(bad)), bad.shape)]) + _where(bad)


def _check(name: str, value: Any, batch_shape: tuple[int, ...]) -> None:
    """Raise if a concrete parameter value does not broadcast or is out of its range."""
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be a number or a numeric array, got dtype {array.dtype}")
    try:
        shape = np.broadcast_shapes(array.shape, batch_shape)
    except ValueError:
        shape = None
    if shape != tuple(batch_shape):
        raise ValueError(
            f"{name} has shape {array.shape}, which does not broadcast to the batch shape "
            f"{tuple(batch_shape)} (logits.shape[:-1])"
        )
    array = np.broadcast_to(array, batch_shape)

    if name in ("top_k", "min_keep"):
        if not np.issubdtype(array.dtype, np.integer):
            not_integer = ~np.isfinite(array) | (array != np.round(array))
            if np.any(not_integer):
                raise ValueError(f"{name} must be an integer, got {_first(array, not_integer)}")
        bad = array < (0 if name == "top_k" else 1)
        allowed = ">= 0 (0 disables top-k)" if name == "top_k" else ">= 1"
    elif name == "temperature":
        bad = ~np.isfinite(array) | (array < 0)
        allowed = "a finite number >= 0 (0 means greedy)"
    else:  # top_p, min_p
        bad = ~((array >= 0) & (array <= 1))  # NaN fails both comparisons
        allowed = "in [0, 1]"
    if np.any(bad):
        raise ValueError(f"{name} must be {allowed}, got {_first(array, bad)}")


def validate_params(params: SamplingParams, batch_shape: tuple[int, ...]) -> None:
    """Check every concrete field of ``params`` against SPEC section 4; skip traced ones."""
    for name in FIELDS:
        value = getattr(params, name)
        if value is None:
            if name in ("temperature", "min_keep"):
                raise ValueError(f"{name} cannot be None; use {getattr(_DEFAULTS, name)!r} instead")
            continue
        if is_tracer(value):
            continue
        _check(name, value, batch_shape)
