"""`SamplingParams` and the validation of every sampling parameter.

Validation is pure Python and NumPy on *concrete* values. Traced JAX values cannot be inspected;
they pass through unchanged and the JAX backend applies the traced policy of the README's "Bad input" table
(clip, treat as disabled, treat as greedy).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from agnostic_sampling._dispatch import is_jax_array
from agnostic_sampling._dispatch import is_tracer

__all__ = ["FIELDS", "OFF", "SHAPING_FIELDS", "STRATEGY_FIELDS", "SamplingParams", "register_pytree",
           "reject_shaping", "resolve_params", "validate_params"]

# The value that turns each step off for one row (``None`` turns it off for every row). The one
# table of these values: backends, the oracle, the CLI and the benchmarks all read it.
OFF: dict[str, float | int] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "min_keep": 1,
                               "typical_p": 1.0, "epsilon": 0.0, "eta": 0.0, "top_n_sigma": float("inf"),
                               "xtc_threshold": 1.0, "xtc_probability": 0.0}
_registered = False


def register_pytree() -> None:
    """Register `SamplingParams` as a JAX pytree (once; needs only ``jax.tree_util``).

    Values are traced data; which fields are ``None`` is static (``None`` is an empty pytree).
    Unflattening rebuilds the object without ``__post_init__``: the leaves JAX hands back (tracers,
    shapes, axis numbers) are stored as they are.
    """
    global _registered
    if not _registered:
        import jax.tree_util

        every = FIELDS + SHAPING_FIELDS

        def flatten_with_keys(params: SamplingParams) -> tuple[list[tuple[Any, Any]], None]:
            return [(jax.tree_util.GetAttrKey(name), getattr(params, name)) for name in every], None

        def flatten(params: SamplingParams) -> tuple[list[Any], None]:
            return [getattr(params, name) for name in every], None

        def unflatten(_: None, values: Any) -> SamplingParams:
            params = object.__new__(SamplingParams)
            for name, value in zip(every, values, strict=True):
                object.__setattr__(params, name, value)
            return params

        jax.tree_util.register_pytree_with_keys(SamplingParams, flatten_with_keys, unflatten, flatten)
        _registered = True


NGRAM_MAX = 16  # the largest no-repeat n-gram size (the comparisons are unrolled up to it on JAX)
_INT_FIELDS = ("top_k", "min_keep")
_INT32_MAX = 2**31 - 1  # any top_k or min_keep at least the vocabulary keeps every token
_INT64 = (-(2**63), 2**63 - 1)
_INT_RANGE = "an integer in [-2**63, 2**63) (any value at least the vocabulary size keeps every token)"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def _canonical(name: str, value: Any) -> Any:  # noqa: C901
    """``value`` as an array of the field's one dtype, so that every value traces alike.

    Floats become float64 NumPy arrays (JAX arrays: JAX's default float, float32 unless x64 is
    on), integers int64 NumPy arrays (JAX: JAX's default int) clamped to ``2**31 - 1``, which
    keeps every token whatever the vocabulary. Under ``jax.jit`` both arrive as the same
    non-weak 32-bit values. Values that do not convert exactly (complex, bool, non-integral or
    out-of-range integers, floats past float32) are left as given, for validation to report.
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return value
    if is_jax_array(value):
        return _canonical_jax(name, value)
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return value
        value = np.int64(value)
    elif isinstance(value, float):
        value = np.float64(value)
    elif isinstance(value, (list, tuple)) and not any(map(is_jax_array, value)):
        try:  # a list of numbers per row; under jit a list would be a pytree of scalars
            value = np.asarray(value)
        except (ValueError, OverflowError):
            return value
    if not isinstance(value, (np.ndarray, np.generic)):
        return value
    kind = _kind(value.dtype)
    if name in _INT_FIELDS:
        if kind == "f" and value.size:
            with np.errstate(invalid="ignore"):
                exact = np.isfinite(value) & (value == np.round(value)) & (np.abs(value) < 2.0**63)
            if not exact.all():
                return value
        elif kind == "u" and value.size and value.max() > _INT64[1]:
            return value
        elif kind not in "iuf":
            return value
        return np.minimum(np.asarray(value, np.int64), _INT32_MAX)
    if kind not in "iuf":
        return value  # complex or bool: an error
    converted = np.asarray(value, np.float64)
    finite = converted[np.isfinite(converted)]  # inf is top_n_sigma's off value (validation decides)
    if finite.size and np.max(np.abs(finite)) > _FLOAT32_MAX:
        return value  # past float32: an error, not a silent inf
    return converted


def _kind(dtype: Any) -> str:
    """NumPy's kind letter, with ``"f"`` for the ml_dtypes floats (bfloat16, float8_*)."""
    return "f" if dtype.name.startswith(("bfloat", "float")) else np.dtype(dtype).kind


def _canonical_jax(name: str, value: Any) -> Any:
    """A JAX array or tracer as JAX's default int or float, not weak-typed (see `_canonical`).

    A concrete array that `_canonical` would leave as given is left as given; a tracer is
    converted whatever its values (they are unknown), with integers clamped into int32 first.
    """
    import jax
    import jax.numpy as jnp

    if _kind(value.dtype) not in "iuf":
        return value  # complex or bool: validation names the parameter
    if not is_tracer(value):
        host = np.asarray(value)
        if _canonical(name, host) is host:
            return value
    if name in _INT_FIELDS:
        if value.dtype != jnp.int32 and jnp.dtype(value.dtype).itemsize >= 4:
            if jnp.issubdtype(value.dtype, jnp.unsignedinteger):
                value = jnp.minimum(value, jnp.asarray(_INT32_MAX, value.dtype))
            else:
                value = jnp.clip(value, -(2**31), _INT32_MAX)
        return jnp.asarray(value, jax.dtypes.canonicalize_dtype(np.int64))
    return jnp.asarray(value, jax.dtypes.canonicalize_dtype(np.float64))


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The sampling parameters, as one value that can be stored, passed around and traced.

    Every field is a Python scalar or an array broadcastable to the batch shape
    ``logits.shape[:-1]``, so one call can mix greedy, hot, top-k and nucleus rows. ``None``
    disables a step for every row; the identity values (``temperature=1``, ``top_k=0``,
    ``top_p=1``, ``min_p=0``) disable it for one row. ``temperature=0`` makes a row greedy, and
    so does a positive temperature below the smallest normal float32 (``1.17549435e-38``, the
    limit of ``T -> 0``), on both backends, eagerly and under ``jit``. A temperature above the
    largest float32 is an error when its value is known; under ``jit`` it arrives as ``inf``,
    which makes the row greedy like every other non-finite temperature. ``top_k`` and
    ``min_keep`` at least the vocabulary size keep every token; past int64 they are an error.
    Complex values are a ``TypeError``.

    Every value is stored as an array of its field's one dtype (floats as float64 NumPy arrays
    or JAX's default float, integers as int64 NumPy arrays or JAX's default int, clamped to
    ``2**31 - 1``), so in a ``jax.jit`` of your own any two `SamplingParams` with the same
    batch shape and the same ``None`` fields share one trace, whether built from Python
    numbers, NumPy or JAX arrays.

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
    # The truncation steps after min-p (README "More truncation steps"), in this order.
    typical_p: Any = None
    epsilon: Any = None
    eta: Any = None
    top_n_sigma: Any = None
    xtc_threshold: Any = None
    xtc_probability: Any = None
    # Logit shaping (README "Logit shaping"): applied to the raw logits before temperature.
    logit_bias: Any = None
    allowed: Any = None
    banned: Any = None
    vocab_size: Any = None
    history: Any = None
    history_lengths: Any = None
    repetition_penalty: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    no_repeat_ngram_size: Any = None
    bad_words: Any = None
    dry: Any = None  # a `Dry` (agnostic_sampling._dry): llama.cpp's sequence-repetition penalty

    def __post_init__(self) -> None:
        # Once JAX is in use, register this class as a pytree, so that params can go into
        # jax.jit before any JAX array has passed through the package.
        if not _registered and "jax" in sys.modules:
            register_pytree()
        for name in FIELDS:
            object.__setattr__(self, name, _canonical(name, getattr(self, name)))


# The shaping fields, checked by `validate_shaping`; FIELDS are the per-row sampling parameters.
SHAPING_FIELDS = ("logit_bias", "allowed", "banned", "vocab_size", "history", "history_lengths",
                  "repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram_size",
                  "bad_words", "dry")
FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name not in SHAPING_FIELDS)
# The steps after min-p (a subset of FIELDS), applied by `backends._strategies`.
STRATEGY_FIELDS = ("typical_p", "epsilon", "eta", "top_n_sigma", "xtc_threshold", "xtc_probability")
_DEFAULTS = SamplingParams()


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


def _check_dtype(name: str, dtype: Any) -> None:
    """Raise unless ``dtype`` is a real number type (a static property: checked under jit too)."""
    if _kind(dtype) == "c":
        raise TypeError(f"{name} must be real, got a complex value (dtype {dtype})")
    if _kind(dtype) not in "iuf":
        raise TypeError(f"{name} must be a number or a numeric array, got dtype {dtype}")


def _check(name: str, value: Any, batch_shape: tuple[int, ...]) -> None:  # noqa: C901
    """Raise if a concrete parameter value does not broadcast or is out of its range."""
    if isinstance(value, complex):
        raise TypeError(f"{name} must be real, got the complex number {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{name} must be {_INT_RANGE if name in _INT_FIELDS else 'a float32 number'}, "
                         f"got {value}")
    array = np.asarray(value)
    _check_dtype(name, array.dtype)
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

    if name in _INT_FIELDS:
        if not np.issubdtype(array.dtype, np.integer):
            not_integer = ~np.isfinite(array) | (array != np.round(array))
            if np.any(not_integer):
                raise ValueError(f"{name} must be an integer, got {_first(array, not_integer)}")
        too_large = array >= 2.0**63 if array.dtype.kind != "i" else np.zeros(array.shape, bool)
        if np.any(too_large | (array < -(2.0**63))):
            raise ValueError(f"{name} must be {_INT_RANGE}, got {_first(array, too_large | (array < 0))}")
        bad = array < (0 if name == "top_k" else 1)
        allowed = ">= 0 (0 disables top-k)" if name == "top_k" else ">= 1"
    elif name == "temperature":
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(array) | (array < 0) | (array > _FLOAT32_MAX)
        allowed = f"a finite number >= 0 and <= {_FLOAT32_MAX:.8g}, the largest float32 (0 means greedy)"
    elif name == "top_n_sigma":
        bad = ~(array >= 0)  # NaN fails
        allowed = ">= 0 (inf disables top-n-sigma)"
    else:  # top_p, min_p, typical_p, epsilon, eta, xtc_threshold, xtc_probability
        bad = ~((array >= 0) & (array <= 1))  # NaN fails both comparisons
        allowed = "in [0, 1]"
    if np.any(bad):
        raise ValueError(f"{name} must be {allowed}, got {_first(array, bad)}")


def validate_params(params: SamplingParams, batch_shape: tuple[int, ...], vocab: int | None = None, *,
                    history_supplied: bool = False) -> None:
    """Check every concrete field of ``params`` against the README's "Bad input" table.

    Traced fields are skipped.

    ``vocab`` (the logits' last dimension) is needed to check the shaping fields' shapes and ids;
    without it only their dtypes and values are checked. ``history_supplied``: the caller (a
    decode loop) counts the penalties' history itself.
    """
    validate_shaping(params, batch_shape, vocab, history_supplied=history_supplied)
    if (params.xtc_threshold is None) != (params.xtc_probability is None):
        given, missing = ("xtc_threshold", "xtc_probability")[:: 1 if params.xtc_probability is None else -1]
        raise ValueError(f"XTC needs both xtc_threshold and xtc_probability: got {given} without {missing}")
    for name in FIELDS:
        value = getattr(params, name)
        if value is None:
            if name in ("temperature", "min_keep"):
                raise ValueError(f"{name} cannot be None; use {getattr(_DEFAULTS, name)!r} instead")
            continue
        if is_tracer(value):
            _check_dtype(name, value.dtype)
            continue
        _check(name, value, batch_shape)


# --------------------------------------------------------------------------------------------
# Logit shaping: bias, masks, penalties (README "Logit shaping")


def reject_shaping(params: SamplingParams, caller: str) -> None:
    """Raise where logit shaping is not supported yet (the decode loops, speculative verification)."""
    given = [name for name in SHAPING_FIELDS if getattr(params, name) is not None]
    if given:
        raise ValueError(f"{caller} does not take logit shaping yet (got {', '.join(given)}); "
                         "apply it with process_logits or sample for now")


def _vector_shape(name: str, array: Any, batch_shape: tuple[int, ...], width: int | None) -> None:
    """Raise unless ``array`` of shape ``(..., width)`` broadcasts to ``batch_shape + (width,)``."""
    if array.ndim == 0:
        raise ValueError(f"{name} must have shape (..., {width if width is not None else 'n'}), got a scalar")
    if width is not None and array.shape[-1] != width:
        raise ValueError(f"{name} has last dimension {array.shape[-1]}, expected {width} "
                         f"(shape {tuple(array.shape)})")
    try:
        shape = np.broadcast_shapes(array.shape[:-1], batch_shape)
    except ValueError:
        shape = None
    if shape != tuple(batch_shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, whose leading dimensions do not broadcast "
                         f"to the batch shape {tuple(batch_shape)} (logits.shape[:-1])")


def _per_row_shape(name: str, array: Any, batch_shape: tuple[int, ...]) -> None:
    try:
        shape = np.broadcast_shapes(array.shape, batch_shape)
    except ValueError:
        shape = None
    if shape != tuple(batch_shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, which does not broadcast to the batch "
                         f"shape {tuple(batch_shape)} (logits.shape[:-1])")


def _check_mask(name: str, value: Any, batch_shape: tuple[int, ...], vocab: int | None) -> None:
    dtype = np.dtype(value.dtype)
    if dtype == np.bool_:
        _vector_shape(name, value, batch_shape, vocab)
    elif dtype == np.uint32:
        _vector_shape(name, value, batch_shape, None if vocab is None else -(-vocab // 32))
    else:
        raise TypeError(f"{name} must be a boolean array (..., V) or a packed bitmask of uint32 words "
                        f"(..., ceil(V / 32)), got dtype {dtype}")


def _check_sparse_bias(bias: tuple[Any, ...], batch_shape: tuple[int, ...], vocab: int | None) -> None:
    """A sparse ``logit_bias``: ``(ids, values)``, both ``(..., M)``, ids in ``[0, V)`` or -1."""
    if len(bias) != 2:
        raise ValueError(f"a sparse logit_bias is a pair (ids, values), got a tuple of {len(bias)}")
    ids, values = (part if hasattr(part, "dtype") else np.asarray(part) for part in bias)
    if not np.issubdtype(np.dtype(ids.dtype), np.integer) or np.dtype(ids.dtype) == bool:
        raise TypeError(f"logit_bias ids must be integers (..., M), got dtype {ids.dtype}")
    if not (np.issubdtype(np.dtype(values.dtype), np.number) and np.dtype(values.dtype) != bool
            or np.dtype(values.dtype).name == "bfloat16"):
        raise TypeError(f"logit_bias values must be numbers (..., M), got dtype {values.dtype}")
    if ids.shape != values.shape:
        raise ValueError(f"logit_bias ids and values must have the same shape, got {tuple(ids.shape)} "
                         f"and {tuple(values.shape)}")
    _vector_shape("logit_bias ids", ids, batch_shape, None)
    if not is_tracer(ids):
        concrete = np.asarray(ids)
        bad = (concrete < -1) | (concrete >= (np.iinfo(np.int64).max if vocab is None else vocab))
        if bad.any():
            raise ValueError(f"logit_bias ids must be in [0, {vocab}) or -1 (padding), "
                             f"got {_first(concrete, bad)}")
    if not is_tracer(values):
        concrete = np.asarray(values, np.float64)
        bad = np.isnan(concrete) | (concrete == np.inf)
        if bad.any():
            raise ValueError(f"logit_bias values must be finite or -inf, got {_first(concrete, bad)}")


def _check_sequence_bans(get: dict[str, Any], batch_shape: tuple[int, ...], vocab: int | None,  # noqa: C901
                         history_supplied: bool) -> None:
    """Check ``no_repeat_ngram_size`` and ``bad_words``.

    The size is per row, in ``[0, NGRAM_MAX]``, and needs a history; the words are ``(..., W, M)``
    ids, right-padded with ``-1``.
    """
    size = get["no_repeat_ngram_size"]
    if size is not None:
        if get["history"] is None and not history_supplied:
            raise ValueError("no_repeat_ngram_size needs history= (the token ids whose n-grams are banned)")
        array = size if hasattr(size, "dtype") else np.asarray(size)
        if not np.issubdtype(np.dtype(array.dtype), np.integer) or np.dtype(array.dtype) == bool:
            raise TypeError(f"no_repeat_ngram_size must be an integer, got dtype {array.dtype}")
        _per_row_shape("no_repeat_ngram_size", array, batch_shape)
        if not is_tracer(array):
            concrete = np.asarray(array)
            bad = (concrete < 0) | (concrete > NGRAM_MAX)
            if bad.any():
                raise ValueError(f"no_repeat_ngram_size must be in [0, {NGRAM_MAX}] (0 disables it), "
                                 f"got {_first(concrete, bad)}")
    words = get["bad_words"]
    if words is None:
        return
    array = words if hasattr(words, "dtype") else np.asarray(words)
    if not np.issubdtype(np.dtype(array.dtype), np.integer) or np.dtype(array.dtype) == bool:
        raise TypeError(f"bad_words must be an integer array (W, M) of token sequences right-padded "
                        f"with -1, got dtype {array.dtype}")
    if array.ndim < 2:
        raise ValueError(f"bad_words must have shape (..., W, M): W sequences of at most M ids, got "
                         f"shape {tuple(array.shape)}")
    _vector_shape("bad_words", array.reshape(*array.shape[:-2], -1), batch_shape, None)
    if not is_tracer(array):
        concrete = np.asarray(array)
        bad = (concrete < -1) | (concrete >= (np.iinfo(np.int64).max if vocab is None else vocab))
        if bad.any():
            raise ValueError(f"bad_words ids must be in [0, {vocab}) or -1 (padding), got "
                             f"{_first(concrete, bad)}")
        padded = concrete == -1
        if (padded[..., :-1] & ~padded[..., 1:]).any():
            raise ValueError("bad_words sequences must be right-padded: -1 only after a sequence's ids")


def validate_shaping(params: SamplingParams, batch_shape: tuple[int, ...], vocab: int | None = None, *,  # noqa: C901
                     history_supplied: bool = False) -> None:
    """Check the shaping fields of ``params``: shapes and dtypes always, values when concrete.

    Raises:
        ValueError: a penalty given without ``history``, a shape that does not fit, a repetition
            penalty <= 0 or a NaN penalty, a history id outside ``[0, V)``
            other than the padding ``-1``, a length outside ``[0, T]``, a ``vocab_size`` < 1.
        TypeError: a mask that is neither boolean nor uint32, non-integer ids or lengths.
    """
    get = {name: getattr(params, name) for name in SHAPING_FIELDS}
    penalties = [name for name in ("repetition_penalty", "frequency_penalty", "presence_penalty")
                 if get[name] is not None]
    if penalties and get["history"] is None and not history_supplied:
        raise ValueError(f"{', '.join(penalties)} needs history= (the token ids to count, shape (..., T))")
    if get["history_lengths"] is not None and get["history"] is None:
        raise ValueError("history_lengths needs history=")

    bias = get["logit_bias"]
    if isinstance(bias, list) and len(bias) == 2 and not np.isscalar(bias[0]):
        raise TypeError("a sparse logit_bias is a tuple (ids, values), got a list; pass tuple(...)")
    if isinstance(bias, tuple):
        _check_sparse_bias(bias, batch_shape, vocab)
    elif bias is not None:
        bias = bias if hasattr(bias, "dtype") else np.asarray(bias)
        if not (np.issubdtype(np.dtype(bias.dtype), np.floating) or np.dtype(bias.dtype).name == "bfloat16"
                or np.issubdtype(np.dtype(bias.dtype), np.integer)):
            raise TypeError(f"logit_bias must be a numeric array (..., V), got dtype {bias.dtype}")
        # A NaN or +inf bias shows in the shaped row's status (no extra pass over (B, V) here).
        _vector_shape("logit_bias", bias, batch_shape, vocab)

    for name in ("allowed", "banned"):
        mask = get[name]
        if mask is not None:
            _check_mask(name, mask if hasattr(mask, "dtype") else np.asarray(mask), batch_shape, vocab)

    size = get["vocab_size"]
    if size is not None:
        array = size if hasattr(size, "dtype") else np.asarray(size)
        if not np.issubdtype(np.dtype(array.dtype), np.integer) or np.dtype(array.dtype) == bool:
            raise TypeError(f"vocab_size must be an integer, got dtype {array.dtype}")
        _per_row_shape("vocab_size", array, batch_shape)
        if not is_tracer(array) and np.any(np.asarray(array) < 1):
            concrete = np.asarray(array)
            raise ValueError(f"vocab_size must be >= 1, got {_first(concrete, concrete < 1)}")

    history = get["history"]
    if history is not None:
        history = history if hasattr(history, "dtype") else np.asarray(history)
        if not np.issubdtype(np.dtype(history.dtype), np.integer) or np.dtype(history.dtype) == bool:
            raise TypeError(f"history must hold integer token ids (..., T), got dtype {history.dtype}")
        _vector_shape("history", history, batch_shape, None)
        if not is_tracer(history):
            ids = np.asarray(history)
            bad = (ids < -1) | (ids >= (np.iinfo(np.int64).max if vocab is None else vocab))
            if bad.any():
                raise ValueError(f"history ids must be in [0, {vocab}) or -1 (padding), "
                                 f"got {_first(ids, bad)}")
        lengths = get["history_lengths"]
        if lengths is not None:
            lengths = lengths if hasattr(lengths, "dtype") else np.asarray(lengths)
            if not np.issubdtype(np.dtype(lengths.dtype), np.integer) or np.dtype(lengths.dtype) == bool:
                raise TypeError(f"history_lengths must be integers, got dtype {lengths.dtype}")
            _per_row_shape("history_lengths", lengths, batch_shape)
            if not is_tracer(lengths):
                concrete = np.asarray(lengths)
                bad = (concrete < 0) | (concrete > history.shape[-1])
                if bad.any():
                    raise ValueError(f"history_lengths must be in [0, {history.shape[-1]}] (T), "
                                     f"got {_first(concrete, bad)}")

    _check_sequence_bans(get, batch_shape, vocab, history_supplied)
    if get["dry"] is not None:
        from agnostic_sampling._dry import check_dry

        check_dry(get["dry"], batch_shape, vocab, get["history"] is not None or history_supplied)
    for name in penalties:
        value = get[name]
        array = value if hasattr(value, "dtype") else np.asarray(value)
        if np.dtype(array.dtype) == bool or not np.issubdtype(np.dtype(array.dtype), np.number):
            raise TypeError(f"{name} must be a number or a numeric array, got dtype {array.dtype}")
        _per_row_shape(name, array, batch_shape)
        if is_tracer(array):
            continue
        concrete = np.broadcast_to(np.asarray(array, np.float64), batch_shape)
        if name == "repetition_penalty":
            bad, allowed = ~(concrete > 0) | ~np.isfinite(concrete), "a finite number > 0 (1 disables it)"
        else:
            bad, allowed = ~np.isfinite(concrete), "a finite number (0 disables it)"
        if bad.any():
            raise ValueError(f"{name} must be {allowed}, got {_first(concrete, bad)}")
