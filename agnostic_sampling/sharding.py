"""Helpers for logits sharded over devices: padding the vocabulary.

The JAX backend needs nothing special for sharded logits: every step of the pipeline is an
elementwise map or a reduction over the vocabulary whose result is one scalar per row, so under
``jax.jit`` XLA's SPMD partitioner runs each step on the local shard and all-reduces the per-row
scalars. Two things are left to the caller, and this module helps with both:

- A committed array (``jax.device_put``) must divide evenly over its mesh axis. `pad_vocab`
  appends ``-inf`` logits, which the pipeline never keeps, so ids, kept sets and probabilities of
  the real tokens are unchanged (slice ``[..., :V]`` off `probs` / `process_logits` if needed).
- Checking that a compiled program moves no vocabulary between devices:
  `agnostic_sampling.testing.collectives` lists its collectives with their sizes.

Importing this module imports neither JAX nor SciPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._dispatch import is_jax_array

__all__ = ["pad_vocab"]


def pad_vocab(logits: Any, multiple: int) -> Any:
    """Pad the last axis with ``-inf`` up to a multiple of ``multiple`` (NumPy or JAX in, same out).

    A ``-inf`` logit is outside every kept set, so sampling the padded logits gives the same
    distribution, and never an id ``>= V``. The draw takes one uniform per row, so the padded
    width does not change which token a key draws (only float summation order can differ).
    Use a multiple of 128 per device (``128 * devices``): the JAX backend works on blocks of up
    to 128 tokens, and a block split between two devices makes XLA all-gather shards. A
    ``multiple`` that does not depend on the device count (1024 covers up to 8 devices) keeps
    even the summation order the same across meshes.

    Args:
        logits: array of shape ``(..., V)``, NumPy or JAX (a tracer too).
        multiple: the padded width is the smallest multiple of this that is ``>= V``.

    Returns:
        The logits, with ``(-V) % multiple`` columns of ``-inf`` appended (the input itself when
        none are needed).

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.sharding import pad_vocab
        >>> pad_vocab(np.array([[1.0, 2.0, 3.0]]), 4).tolist()
        [[1.0, 2.0, 3.0, -inf]]
    """
    if isinstance(multiple, (bool, np.bool_)) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    extra = -logits.shape[-1] % int(multiple)
    if extra == 0:
        return logits
    widths = [(0, 0)] * (len(logits.shape) - 1) + [(0, extra)]
    if is_jax_array(logits):
        import jax.numpy as jnp

        return jnp.pad(logits, widths, constant_values=-jnp.inf)
    logits = np.asarray(logits)
    return np.pad(logits, widths, constant_values=-np.inf)
