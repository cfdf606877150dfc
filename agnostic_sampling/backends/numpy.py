"""The sampling pipeline for NumPy arrays: the backend's face.

The conversions at the boundary and the public operations. The kept sets (how a row's threshold
is found without sorting the vocabulary, and how most exponentials are avoided) are
`_numpy_pipeline`; the draws `_numpy_draw`; log-probabilities `_numpy_logprobs`; chains in any
order `_numpy_chain`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._chain import Chain
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import is_seed
from agnostic_sampling._seed import to_words
from agnostic_sampling._seed import uniforms
from agnostic_sampling.backends import ROW_OK
from agnostic_sampling.backends import _acceptance
from agnostic_sampling.backends import _chain
from agnostic_sampling.backends import _strategies
from agnostic_sampling.backends._numpy_chain import _chain_candidates
from agnostic_sampling.backends._numpy_chain import _chain_rows
from agnostic_sampling.backends._numpy_chain import _process_chain
from agnostic_sampling.backends._numpy_draw import _draw_by_blocks
from agnostic_sampling.backends._numpy_draw import _draw_dense
from agnostic_sampling.backends._numpy_draw import _draw_group
from agnostic_sampling.backends._numpy_draw import _draw_in_token_order
from agnostic_sampling.backends._numpy_logprobs import kept_logprobs
from agnostic_sampling.backends._numpy_pipeline import _pipeline
from agnostic_sampling.backends._numpy_pipeline import _refined
from agnostic_sampling.backends._numpy_pipeline import _Rows
from agnostic_sampling.backends._numpy_pipeline import _status
from agnostic_sampling.backends._numpy_pipeline import first_argmax
from agnostic_sampling.backends._numpy_rows import _rows
from agnostic_sampling.backends._numpy_rows import _shaped_rows
from agnostic_sampling.backends._numpy_rows import _tempered

# --------------------------------------------------------------------------------------------
# Conversions at the boundary


def asarray(logits: Any) -> np.ndarray:
    """The logits as a NumPy array (no copy when they already are one)."""
    try:
        return np.asarray(logits)
    except ValueError as error:  # NumPy refuses ragged nested sequences
        raise ValueError(f"logits must be a rectangular array of shape (..., V); got a ragged "
                         f"{type(logits).__name__} ({error})") from None


def as_key(key: Any) -> np.random.Generator | SeedWords:
    """A ``numpy.random.Generator`` from a Generator, an int seed or a SeedSequence.

    A `Seed` gives its checked words. Any non-negative int is a seed, however large (as for
    ``numpy.random.default_rng``).
    """
    if isinstance(key, np.random.Generator):
        return key
    if is_seed(key):
        return to_words(key, np)
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)) and key < 0:
        raise ValueError(f"key must be a non-negative int seed, a numpy.random.Generator, a "
                         f"SeedSequence or a Seed, got {int(key)}")
    if isinstance(key, np.random.SeedSequence) or (
        isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))
    ):
        return np.random.default_rng(key)
    raise TypeError(
        "key must be a numpy.random.Generator, an int seed, a numpy.random.SeedSequence or a Seed, "
        f"got {type(key).__name__}"
    )


# --------------------------------------------------------------------------------------------
# The public operations


def greedy(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each row's maximum, and the row status."""
    ids, best = first_argmax(_rows(logits, columns_ok=True))  # a NaN row shows in `best`
    return ids.reshape(logits.shape[:-1]), _status(best).reshape(logits.shape[:-1])


def process_logits(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """Tempered logits, ``-inf`` outside each row's kept set."""
    if isinstance(params, Chain):
        return _process_chain(logits, params)
    batch_shape = logits.shape[:-1]
    x = _shaped_rows(logits, params)
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    # A copy made by `_rows` (strided rows, a narrower dtype) is the output's buffer.
    out = _tempered(x, kept.row_max, prm.temperature, in_place=not np.may_share_memory(x, logits))
    cut = kept.cut[:, None]
    if np.any(cut > -np.inf):
        np.copyto(out, -np.inf, where=out < cut)
    greedy_rows = np.flatnonzero(kept.greedy)
    if greedy_rows.size:
        out[greedy_rows] = -np.inf
        out[greedy_rows, kept.first[greedy_rows]] = 0
    if _strategies.present(params):
        out = _refined(out, params, batch_shape)
    return out.reshape(logits.shape), status.reshape(batch_shape)


def probs(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """``softmax(process_logits(...))``: float32, or float64 for float64 input."""
    z, status = process_logits(logits, params)
    if z is None:
        return None, status
    e = np.exp(z, out=z)  # every row's largest kept logit is 0: no shift needed
    e /= e.sum(axis=-1, keepdims=True)
    return e, status


def sample(key: np.random.Generator | SeedWords, logits: np.ndarray,
           params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """One exact draw per row from the kept set, by inverse CDF on two uniforms per row.

    For a `Seed`, one uniform per row, in token order (`_draw_in_token_order`).
    """
    batch_shape = logits.shape[:-1]
    if isinstance(params, Chain) or _strategies.present(params):
        return _sample_refined(key, logits, params)
    x = _shaped_rows(logits, params, columns_ok=True)  # `_pipeline` and the draws read column-major rows well
    prm = _Rows.from_params(params, batch_shape, x.dtype)
    seeded = isinstance(key, SeedWords)
    uniform = uniforms(key, batch_shape, np).reshape(-1) if seeded else key.random((x.shape[0], 2))
    kept, status = _pipeline(x, prm)
    if kept is None:
        return None, status.reshape(batch_shape)
    if seeded:
        return _draw_in_token_order(x, kept, prm, uniform).reshape(batch_shape), status.reshape(batch_shape)
    ids = kept.first.copy()
    dense = np.flatnonzero(kept.dense)
    if dense.size:
        ids[dense] = _draw_dense(x, dense, kept.block_max[dense], kept.row_max[dense], prm.temperature[dense],
                                 uniform[dense])
    for group in kept.groups:
        ids[group.rows] = _draw_group(x, kept, prm.temperature, group, uniform[group.rows, 1])
    return ids.reshape(batch_shape), status.reshape(batch_shape)


def _sample_refined(key: np.random.Generator | SeedWords, logits: np.ndarray,
                    params: SamplingParams) -> tuple[np.ndarray | None, np.ndarray]:
    """`sample` through whole rows (a `Chain`, or the steps of `_strategies`): one uniform per row."""
    batch_shape = logits.shape[:-1]
    n_rows = int(np.prod(batch_shape, dtype=np.int64))
    uniform = uniforms(key, batch_shape, np).reshape(-1) if isinstance(key, SeedWords) else key.random(n_rows)
    if isinstance(params, Chain):  # a chain that starts with top-k draws from its candidates
        x, status = _chain_rows(logits, params)
        min_keep_on = bool(np.any(np.asarray(params.min_keep) != 1))
        cand = None
        if np.all(status == ROW_OK):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                cand = _chain_candidates(x, params, batch_shape, min_keep_on)
        if cand is not None and cand.exact.all():
            at = _draw_by_blocks(np.exp(cand.z), uniform.astype(np.float64))
            return np.take_along_axis(cand.index, at[:, None], -1)[:, 0].reshape(batch_shape), \
                status.reshape(batch_shape)
    z, status = process_logits(logits, params)
    if z is None:
        return None, status
    weight = np.exp(z.reshape(n_rows, -1))
    return _draw_by_blocks(weight, uniform.astype(np.float64)).reshape(batch_shape), status


# --------------------------------------------------------------------------------------------
# Speculative verification


def verify_draft(key: np.random.Generator, logits: np.ndarray, draft_ids: np.ndarray,
                 draft_probs: np.ndarray | None,
                 params: SamplingParams) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray]:
    """Accept drafts by the standard rule, then one token from the residual or the bonus position.

    ``logits`` is ``(B, K + 1, V)``; returns ``(tokens (B, K + 1), num_accepted (B,))`` and the
    status of every target position ``(B, K + 1)``.
    """
    batch, positions, _ = logits.shape
    uniform = key.random((batch, positions))
    p, status = probs(logits, _acceptance.per_position(params, positions, np))
    if p is None:
        return None, status
    decision = _acceptance.accept(p, draft_ids, draft_probs, uniform, np)
    last = _draw_by_blocks(decision.residual, uniform[:, -1])
    tokens = _acceptance.emitted(draft_ids.astype(np.int64), decision.num_accepted, last, np)
    return (tokens, decision.num_accepted.astype(np.int64)), status



def logprobs(logits: np.ndarray, ids: Any, params: SamplingParams, kind: str,
             top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """``(token, rank, top_ids, top_logprobs, kept_log_mass, kept_count)`` and the row status."""
    if isinstance(params, Chain):
        return _logprobs_chain(logits, ids, params, kind, top_n)
    if _strategies.present(params):
        return _logprobs_refined(logits, ids, params, kind, top_n)
    return kept_logprobs(logits, ids, params, kind, top_n)


def _logprobs_refined(logits: np.ndarray, ids: Any, params: SamplingParams, kind: str,
                      top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """`logprobs` with the steps of `_strategies`: the pipeline's answer, then the refined rows."""
    fields, status = logprobs(logits, ids, _strategies.without(params), kind, top_n)
    if fields is None:
        return None, status
    z, _ = process_logits(logits, _strategies.without(params))
    vocab = logits.shape[-1]
    z = z.reshape(-1, vocab)
    refined = _refined(z.copy(), params, logits.shape[:-1])
    rows_first = [f.reshape(len(z), *f.shape[logits.ndim - 1:]) for f in fields]
    with np.errstate(divide="ignore"):
        adjusted = _strategies.adjust_logprobs(rows_first, z, refined, np.asarray(ids).reshape(-1), kind, np,
                                               _stable_top_n(top_n))
    return tuple(a.reshape(f.shape) for a, f in zip(adjusted, fields, strict=True)), status


def _stable_top_n(n: int) -> Any:
    def top(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-values, axis=-1, kind="stable")[:, :n]
        return np.take_along_axis(values, order, -1), order.astype(np.int64)

    return top


def _logprobs_chain(logits: np.ndarray, ids: Any, chain: Chain, kind: str,
                    top_n: int) -> tuple[tuple[np.ndarray, ...] | None, np.ndarray]:
    """`logprobs` for a `Chain`, on whole rows (`_chain.logprobs`)."""
    z, status = _process_chain(logits, chain)
    if z is None:
        return None, status
    tempered, _ = _process_chain(logits, chain, only=("temperature",))
    vocab = logits.shape[-1]
    x, _ = _chain_rows(logits, chain, shaped=kind == "processed")  # "raw": the logits as given
    with np.errstate(divide="ignore", invalid="ignore"):
        fields = _chain.logprobs(x, z.reshape(-1, vocab), tempered.reshape(-1, vocab),
                                 np.asarray(ids).reshape(-1).astype(np.int64), kind, _stable_top_n(top_n), np)
    batch_shape = logits.shape[:-1]
    top_shape = batch_shape + (top_n,)
    shapes = (batch_shape, batch_shape, top_shape, top_shape, batch_shape, batch_shape)
    return tuple(f.reshape(shape) for f, shape in zip(fields, shapes, strict=True)), status
