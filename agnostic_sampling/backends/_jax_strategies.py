"""The JAX backend's searches for `_strategies` (private): sort-free, by the bit-pattern search.

The typical set's bound is the smallest score ``t`` with ``sum(q over s <= t) >= p * sum(q)``:
the same 5-ary search on the float's bit pattern as top-p (`_jax_search._search`), over scores
``>= 0``; the ``n``-th largest value is `_jax_search._kth_largest`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from agnostic_sampling.backends._jax_search import _from_key
from agnostic_sampling.backends._jax_search import _kth_largest
from agnostic_sampling.backends._jax_search import _probes
from agnostic_sampling.backends._jax_search import _row_sums
from agnostic_sampling.backends._jax_search import _search
from agnostic_sampling.backends._jax_search import _to_key
from agnostic_sampling.backends._jax_search import _top_p_threshold
from agnostic_sampling.backends._strategies import Searches


def _typical_bound(log_q: jax.Array, entropy: jax.Array, p: jax.Array) -> jax.Array:
    dtype = log_q.dtype
    score = jnp.where(log_q > -jnp.inf, jnp.abs(log_q + entropy[:, None]), jnp.inf)
    q = jnp.exp(log_q)
    target = (p * _row_sums([q])[:, 0])[:, None]

    def step(points: jax.Array) -> tuple[jax.Array, jax.Array]:
        thresholds = _from_key(points, dtype)
        mass = _row_sums([jnp.where(score <= thresholds[:, j, None], q, 0) for j in range(points.shape[1])])
        return mass < target, jnp.zeros(points.shape, bool)

    lo = jnp.broadcast_to(_to_key(jnp.asarray(0, dtype)) - 1, p.shape)  # -0.0, below every score
    hi = jnp.broadcast_to(_to_key(jnp.asarray(jnp.inf, dtype)), p.shape)
    _, hi = _search(lo, hi, p >= 1, step, _probes(score.shape[-1]))
    return _from_key(hi, dtype)


def _nth_largest(values: jax.Array, n: jax.Array) -> jax.Array:
    return _kth_largest(values, n, jnp.zeros(n.shape, bool))


def _top_p_bound(z: jax.Array, p: jax.Array) -> jax.Array:
    floor = jnp.full(p.shape, -jnp.inf, z.dtype)
    return _top_p_threshold(z, jnp.exp(z), floor, p, p >= 1)


SEARCHES = Searches(_typical_bound, _nth_largest, _top_p_bound)
