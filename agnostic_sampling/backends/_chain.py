"""A `Chain`'s steps in the order given, on whole rows, written once for NumPy and JAX (private).

Each step reads the row as the steps before it left it (tempered logits, ``-inf`` outside the
kept set) and keeps a subset, with the README's semantics for that step; ``min_keep`` holds for
every truncation step (the ``min_keep`` highest logits of the set received, ties kept; typical-p
its most typical). A ``temperature`` step of ``0`` (or under the traced policy, any temperature
that is not a normal positive float32) makes the row greedy on the first maximum of the row as
it stands; later steps keep that one token. The searches are the backend's (`Searches`).

A chain whose first truncation is top-k (only temperatures before it) can run on *candidates*:
the blocks of the row with the largest maxima, every other token at most ``bound``. Top-k keeps
an upper set whatever the temperature, and every later step reads only the set it receives, so
the chain run on the candidates is the chain run on the row wherever the top-k set lies above
``bound`` (`run_candidates` says where); the backends run whole rows elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._chain import Chain
from agnostic_sampling._params import OFF
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._strategies import Searches

_TINY = float(np.finfo(np.float32).tiny)


def _column(value: Any, name: str, batch_shape: tuple[int, ...], dtype: Any, xp: Any) -> Any:
    array = xp.asarray(OFF[name] if value is None else value)
    return xp.reshape(xp.broadcast_to(array.astype(dtype), batch_shape), (-1,))


def _unit(value: Any, name: str, batch_shape: tuple[int, ...], dtype: Any, xp: Any) -> Any:
    column = _column(value, name, batch_shape, dtype, xp)
    return xp.where(xp.isnan(column), OFF[name], xp.clip(column, 0, 1))


def _top(z: Any, xp: Any) -> Any:
    top = xp.max(z, axis=-1)
    return xp.where(top > -np.inf, top, 0)


def _floor(z: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    """The ``min_keep``-th largest logit of each row (ties counted): a threshold on ``z``."""
    top = _top(z, xp)
    if min_keep is None:
        return top
    return searches.nth_largest(z - top[:, None], min_keep) + top


def _truncate(z: Any, keep: Any, on: Any, min_keep: Any, searches: Searches, xp: Any) -> Any:
    keep = keep | (z >= _floor(z, min_keep, searches, xp)[:, None])
    return xp.where(on[:, None] & ~keep, -np.inf, z)


def _temperature(z: Any, t: Any, xp: Any) -> Any:
    greedy = ~(t >= _TINY) | ~xp.isfinite(t)
    top = _top(z, xp)
    first = xp.argmax(z, axis=-1)
    one_hot = xp.arange(z.shape[-1])[None, :] == first[:, None]
    tempered = (z - top[:, None]) / xp.where(greedy, 1, t)[:, None]
    return xp.where(greedy[:, None], xp.where(one_hot, 0, -np.inf).astype(z.dtype), tempered)


def _step(z: Any, kind: str, values: tuple[Any, ...], batch_shape: tuple[int, ...], min_keep: Any,
          searches: Searches, xp: Any) -> Any:
    dtype = z.dtype
    if kind == "temperature":
        return _temperature(z, _column(values[0], "temperature", batch_shape, dtype, xp), xp)
    if kind == "top_k":
        k = xp.maximum(_column(values[0], "top_k", batch_shape, np.int32, xp), 0)
        n = k if min_keep is None else xp.maximum(k, min_keep)
        floor = searches.nth_largest(z - _top(z, xp)[:, None], n) + _top(z, xp)
        return xp.where((k > 0)[:, None] & (z < floor[:, None]), -np.inf, z)
    if kind == "top_p":
        p = _unit(values[0], "top_p", batch_shape, dtype, xp)
        top = _top(z, xp)
        bound = searches.top_p_bound(z - top[:, None], p) + top
        return _truncate(z, z >= bound[:, None], p < 1, min_keep, searches, xp)
    if kind == "min_p":
        m = _unit(values[0], "min_p", batch_shape, dtype, xp)
        floor = _top(z, xp) + xp.log(xp.where(m > 0, m, 1))
        return _truncate(z, z >= floor[:, None], m > 0, min_keep, searches, xp)
    fields = dict(zip(_chain_fields(kind), values, strict=True))
    strategy = _strategies.StrategyRows(None, None, None, None, None, None, min_keep)
    strategy = strategy._replace(**{name: _strategy_column(name, value, batch_shape, dtype, xp)
                                    for name, value in fields.items()})
    return _strategies.refine(z, strategy, searches, xp)


def _chain_fields(kind: str) -> tuple[str, ...]:
    return ("xtc_threshold", "xtc_probability") if kind == "xtc" else (kind,)


def _strategy_column(name: str, value: Any, batch_shape: tuple[int, ...], dtype: Any, xp: Any) -> Any:
    if name == "top_n_sigma":
        column = _column(value, name, batch_shape, dtype, xp)
        return xp.where(column >= 0, column, np.inf)
    return _unit(value, name, batch_shape, dtype, xp)


def run(z: Any, chain: Chain, batch_shape: tuple[int, ...], searches: Searches, xp: Any,
        min_keep_on: bool, only: tuple[str, ...] | None = None) -> Any:
    """Cleaned rows ``(N, V)`` after every step of ``chain`` (or of the kinds in ``only``).

    Each row's maximum is 0 on return (rows with no finite logit stay ``-inf``).
    """
    min_keep = None
    if min_keep_on:
        min_keep = xp.maximum(_column(chain.min_keep, "min_keep", batch_shape, np.int32, xp), 1)
    z = z - _top(z, xp)[:, None]
    for step in chain.steps:
        if only is None or step.kind in only:
            z = _step(z, step.kind, step.values, batch_shape, min_keep, searches, xp)
    return z - _top(z, xp)[:, None]


def leading_top_k(chain: Chain) -> int | None:
    """The index of ``chain``'s first truncation step if it is top-k (temperatures before it), else None."""
    for i, step in enumerate(chain.steps):
        if step.kind == "top_k":
            return i
        if step.kind != "temperature":
            return None
    return None


def run_candidates(x: Any, bound: Any, chain: Chain, batch_shape: tuple[int, ...], searches: Searches,
                   xp: Any, min_keep_on: bool) -> tuple[Any, Any]:
    """`run` on candidate rows ``x`` ``(N, C)``, and per row whether that is the row's result.

    ``x`` holds cleaned logits of tokens in vocabulary order, every token outside them at most
    ``bound`` ``(N,)``; ``chain`` starts with temperatures and a top-k (`leading_top_k`). Exact
    where top-k is on and the ``max(k, min_keep)``-th largest candidate lies above ``bound``: the
    top-k set, its ties and the row's first maximum (for a greedy temperature before it) are
    then candidates.
    """
    first = leading_top_k(chain)
    k = xp.maximum(_column(chain.steps[first].values[0], "top_k", batch_shape, np.int32, xp), 0)
    n = k
    if min_keep_on:
        n = xp.maximum(k, xp.maximum(_column(chain.min_keep, "min_keep", batch_shape, np.int32, xp), 1))
    top = _top(x, xp)
    kth = searches.nth_largest(x - top[:, None], n) + top
    return run(x, chain, batch_shape, searches, xp, min_keep_on), (k > 0) & (kth > bound)


def logprobs(x: Any, z: Any, tempered: Any, ids: Any, kind: str, top_n_of: Any,
             xp: Any) -> tuple[Any, ...]:
    """`logprobs`'s fields (rows first) for a chain.

    From the cleaned rows ``x``, the chain's result ``z`` and the rows after its temperature steps
    alone, ``tempered`` (all ``(N, V)``). The rank is by logit; ``kept_log_mass`` is the log of
    the mass ``tempered`` puts on the kept set (0 for greedy rows, whose ``tempered`` row is one
    token).
    """
    vocab = x.shape[-1]
    valid = (ids >= 0) & (ids < vocab)
    at = xp.clip(ids, 0, vocab - 1)[:, None]
    chosen = xp.take_along_axis(x, at, axis=-1)
    rank = xp.where(valid, 1 + xp.sum(x > chosen, axis=-1), 0)
    kept = z > -np.inf
    values = _strategies._distribution(z if kind == "processed" else x, xp).log_q.astype(x.dtype)
    token = xp.where(valid, xp.take_along_axis(values, at, axis=-1)[:, 0], np.nan)
    top_logprobs, top_ids = top_n_of(values)
    log_t = _strategies._distribution(tempered, xp).log_q
    mass = xp.sum(xp.where(kept, xp.exp(log_t), 0), axis=-1)
    greedy = xp.sum(tempered > -np.inf, axis=-1) <= 1
    log_mass = xp.minimum(xp.log(xp.where(mass > 0, mass, 1)), 0)
    kept_log_mass = xp.where(greedy, 0, log_mass).astype(x.dtype)
    return token, rank, top_ids, top_logprobs, kept_log_mass, xp.sum(kept, axis=-1)
