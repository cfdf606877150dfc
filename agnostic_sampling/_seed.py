"""`Seed`: stateless per-row keys whose uniforms are the same on NumPy and JAX, bit for bit.

A row's uniform is a pure function of its ``(seed, position)``: threefry-2x32 with 20 rounds
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the function under
``jax.random``'s default generator) keyed by the seed's two 32-bit words and applied to the
position's two 32-bit words, written once against an array namespace (``numpy`` or
``jax.numpy``) on ``uint32`` arithmetic. The top 24 bits of the first output word, times
``2**-24``, give a float32 in ``[0, 1)`` that both backends compute exactly. Nothing depends on
the other rows, so a row draws the same token in any batch, and a decode loop advances the
position instead of splitting keys.

Concrete seeds and positions are checked and split into words on the host (so 64-bit values
work on JAX without ``jax_enable_x64``); traced ones are split with ``jax.numpy`` inside the
program, so new values never recompile.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._dispatch import is_jax_array
from agnostic_sampling._dispatch import is_tracer

__all__ = ["Seed", "SeedWords", "advance", "is_seed", "per_row", "register_pytree", "threefry_2x32",
           "to_words", "uniforms"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32's rotation constants
_PARITY = 0x1BD11BDA  # the key schedule's third word is k0 ^ k1 ^ this
_LOW = 0xFFFFFFFF
_registered = False


def register_pytree() -> None:
    """Register `Seed` as a JAX pytree (once; needs only ``jax.tree_util``): both fields are data."""
    global _registered
    if not _registered:
        import jax.tree_util

        jax.tree_util.register_dataclass(Seed, data_fields=["seed", "position"], meta_fields=[])
        _registered = True


@dataclasses.dataclass(frozen=True)
class Seed:
    """A stateless key: the uniform of each row is a function of that row's (seed, position) alone.

    Pass it as ``key`` to `sample` or `generate` on either backend. ``seed`` and ``position`` are
    integers in ``[0, 2**64)``, each a scalar or an integer array broadcastable to the batch
    shape ``logits.shape[:-1]``. The same (seed, position) draws the same uniform on NumPy and on
    JAX, bit for bit, whatever else is in the batch: a request replays on either framework and in
    any batch. The draw is an inverse CDF in token-id order on both backends, so the same uniform
    gives the same token (except where the two backends' float32 masses put it within rounding of
    a token boundary; greedy rows always agree). `generate` draws the token at index ``j`` of its
    ``ids`` with ``Seed(seed, position + j)``.

    Values are checked when the key is used: a negative value, a value of ``2**64`` or more, a
    non-integer dtype, or a shape that does not broadcast to the batch is an error. Traced values
    (inside ``jax.jit``) cannot be checked; there a negative value is read as its two's
    complement. Without ``jax_enable_x64``, ``jax.jit`` turns 64-bit integer arguments into
    32-bit ones before this package sees them, so values passed into your own jitted function
    must stay below ``2**32`` (`sample` and `generate` called outside ``jit`` take the full
    range). Rows with the same (seed, position) get the same uniform, so give each request its
    own seed.

    On JAX this class is a pytree (registered once JAX is in use): both fields are traced data,
    so new seeds and positions never recompile.

    Args:
        seed: the rows' seeds.
        position: the rows' positions (counters): advance by one per drawn token.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], np.float32))
        >>> both = smp.sample(smp.Seed(np.array([7, 8]), 0), logits)
        >>> alone = smp.sample(smp.Seed(8, 0), logits[1:])  # row 1 on its own
        >>> bool(both[1] == alone[0])
        True
    """

    seed: Any
    position: Any = 0

    def __post_init__(self) -> None:
        # Once JAX is in use, register this class as a pytree, so that a Seed can go into
        # jax.jit before any JAX array has passed through the package.
        if not _registered and "jax" in sys.modules:
            register_pytree()


class SeedWords(NamedTuple):
    """A `Seed` as four ``uint32`` arrays (a pytree as a NamedTuple): what the backends draw from."""

    key_hi: Any
    key_lo: Any
    counter_hi: Any
    counter_lo: Any


def is_seed(key: Any) -> bool:
    """True for a `Seed` or its words."""
    return isinstance(key, (Seed, SeedWords))


# --------------------------------------------------------------------------------------------
# The counter-based generator (one specification for both backends)


def threefry_2x32(key: tuple[Any, Any], counter: tuple[Any, Any], xp: Any) -> tuple[Any, Any]:
    """Threefry-2x32, 20 rounds, on ``uint32`` arrays of one shape (``xp``: numpy or jax.numpy).

    Returns the two output words for key words ``key`` and counter words ``counter``;
    ``jax.random``'s ``threefry_2x32`` gives the same words for the same key and counter.
    Additions wrap modulo ``2**32``.
    """
    k0, k1 = key
    schedule = (k0, k1, k0 ^ k1 ^ xp.uint32(_PARITY))
    x0 = counter[0] + k0
    x1 = counter[1] + k1
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = (x1 << xp.uint32(r)) | (x1 >> xp.uint32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + xp.uint32(group + 1)
    return x0, x1


def _broadcast(name: str, value: Any, batch_shape: tuple[int, ...], xp: Any) -> Any:
    shape = tuple(np.shape(value))
    try:
        fits = np.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"Seed.{name} has shape {shape}, which does not broadcast to the batch shape "
            f"{tuple(batch_shape)} (logits.shape[:-1])"
        )
    return xp.broadcast_to(xp.asarray(value, xp.uint32), batch_shape).reshape(-1)


def uniforms(words: SeedWords, batch_shape: tuple[int, ...], xp: Any) -> Any:
    """One float32 uniform in ``[0, 1)`` per row, of shape ``batch_shape``.

    The top 24 bits of threefry's first word, times ``2**-24``: exact in float32 on both backends.
    """
    names = ("seed", "seed", "position", "position")
    k0, k1, c0, c1 = (_broadcast(name, word, batch_shape, xp)
                      for name, word in zip(names, words, strict=True))
    bits, _ = threefry_2x32((k0, k1), (c0, c1), xp)
    u = (bits >> xp.uint32(8)).astype(xp.float32) * xp.float32(2.0**-24)
    return u.reshape(batch_shape)


def per_row(words: SeedWords, batch: int, xp: Any) -> SeedWords:
    """Every word as one value per row ``(batch,)``, so scalar and per-row seeds share a compile."""
    for name, word in zip(("seed", "seed", "position", "position"), words, strict=True):
        if np.shape(word) not in ((), (1,), (batch,)):
            raise ValueError(f"Seed.{name} has shape {tuple(np.shape(word))}; generate needs a "
                             f"scalar or one value per prompt row ({batch},)")
    return SeedWords(*(xp.broadcast_to(word, (batch,)) for word in words))


def advance(words: SeedWords, steps: Any, xp: Any) -> SeedWords:
    """The same seeds at ``position + steps`` (``0 <= steps < 2**32``), carrying into the high word."""
    step = xp.asarray(steps).astype(xp.uint32)
    low = words.counter_lo + step
    carry = (low < words.counter_lo).astype(xp.uint32)
    return SeedWords(words.key_hi, words.key_lo, words.counter_hi + carry, low)


# --------------------------------------------------------------------------------------------
# Checking and splitting the values


def _where(bad: np.ndarray) -> str:
    if bad.ndim == 0:
        return ""
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f" at row {first[0] if len(first) == 1 else first}"


def _check_dtype(name: str, dtype: Any) -> None:
    dtype = np.dtype(dtype)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise TypeError(f"Seed.{name} must hold integers in [0, 2**64), got dtype {dtype}")


def _concrete_words(name: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    """High and low ``uint32`` words of a concrete value, after checking it is in ``[0, 2**64)``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Seed.{name} must be an integer in [0, 2**64), got bool {value!r}")
    if isinstance(value, int):
        if not 0 <= value < 2**64:
            raise ValueError(f"Seed.{name} must be in [0, 2**64), got {value}")
        value = np.uint64(value)
    array = np.asarray(value)
    _check_dtype(name, array.dtype)
    if np.issubdtype(array.dtype, np.signedinteger):
        negative = array < 0
        if negative.any():
            first = array[np.unravel_index(int(np.argmax(negative)), array.shape)] if array.ndim else array
            raise ValueError(f"Seed.{name} must be in [0, 2**64), got {int(first)}{_where(negative)}")
    array = array.astype(np.uint64)
    return (array >> np.uint64(32)).astype(np.uint32), (array & np.uint64(_LOW)).astype(np.uint32)


def _traced_words(name: str, value: Any) -> tuple[Any, Any]:
    """High and low ``uint32`` words of a traced JAX integer (negative: two's complement)."""
    import jax.numpy as jnp
    from jax import lax

    _check_dtype(name, value.dtype)
    if np.dtype(value.dtype).itemsize == 8:
        wide = lax.bitcast_convert_type(value, jnp.uint64) if jnp.issubdtype(value.dtype, jnp.signedinteger) \
            else value
        return (wide >> 32).astype(jnp.uint32), (wide & _LOW).astype(jnp.uint32)
    if jnp.issubdtype(value.dtype, jnp.signedinteger):
        low = lax.bitcast_convert_type(value.astype(jnp.int32), jnp.uint32)
    else:
        low = value.astype(jnp.uint32)
    return jnp.zeros_like(low), low


def to_words(key: Seed | SeedWords, xp: Any) -> SeedWords:
    """Check a `Seed` and split its values into ``uint32`` words (words pass through).

    Concrete values (Python ints, NumPy arrays, JAX arrays outside a trace) are checked and split
    on the host; traced values only on JAX (``xp`` is jax.numpy), inside the program.
    """
    if isinstance(key, SeedWords):
        return key
    parts = []
    for name in ("seed", "position"):
        value = getattr(key, name)
        if is_tracer(value):
            if xp is np:
                raise TypeError(
                    f"Seed.{name} is a traced JAX value but the numpy backend was chosen; "
                    "pass JAX logits (or backend='jax') to draw inside jax.jit"
                )
            parts.extend(_traced_words(name, value))
        else:
            if is_jax_array(value):
                value = np.asarray(value)
            parts.extend(_concrete_words(name, value))
    return SeedWords(*parts)
