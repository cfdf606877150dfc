"""The test oracle: the sampling pipeline in float64 NumPy, one row at a time.

Sort-based and written for clarity, it shares no code with the fast backends (only the table of
off values and the parameter validation). It needs NumPy alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._api import LogprobsResult
from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import validate_chain
from agnostic_sampling._chain import with_keywords
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SHAPING_FIELDS
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import resolve_params
from agnostic_sampling._params import validate_params

__all__ = ["reference_logprobs", "reference_mirostat", "reference_probs"]


class _Settings(NamedTuple):
    """One row's parameters, every step present (its off value where not asked for)."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    min_keep: int
    typical_p: float
    epsilon: float
    eta: float
    top_n_sigma: float
    xtc_threshold: float
    xtc_probability: float


def _reference_row(x: np.ndarray, settings: _Settings) -> np.ndarray:
    """The processed distribution of one row of float64 logits."""
    if settings.temperature == 0:
        one_hot = np.zeros_like(x)
        one_hot[np.argmax(x)] = 1.0
        return one_hot
    _, log_p = _reference_kept(x, settings)
    return np.exp(log_p)


def _reference_kept(x: np.ndarray, settings: _Settings) -> tuple[np.ndarray, np.ndarray]:
    """The tempered logits of one row (maximum 0) and its log-probabilities, for ``T > 0``.

    The log-probabilities are ``-inf`` outside the kept set; XTC's are those of its mixture.
    """
    temperature, top_k, top_p, min_p, min_keep = settings[:5]
    z = (x - x.max()) / temperature
    kept = np.isfinite(z)

    def top_with_ties(candidates: np.ndarray, n: int) -> np.ndarray:
        """The n largest of ``candidates`` and everything tied with the n-th."""
        values = np.sort(z[candidates])[::-1]
        if n >= values.size:
            return candidates
        return candidates & (z >= values[n - 1])

    def respect_min_keep(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return after | top_with_ties(before, min_keep)

    if top_k > 0:
        kept = respect_min_keep(kept, top_with_ties(kept, top_k))

    if top_p < 1:
        q = np.where(kept, np.exp(z), 0.0)
        q /= q.sum()
        # mass of the tokens strictly more probable than each token: sort decreasingly, take the
        # mass before each token, and give every member of a tie the mass before the first one
        order = np.argsort(-q, kind="stable")
        sorted_q = q[order]
        mass_before = np.cumsum(sorted_q) - sorted_q
        first_of_tie = np.searchsorted(-sorted_q, -sorted_q, side="left")
        more_probable = np.empty_like(q)
        more_probable[order] = mass_before[first_of_tie]
        kept = respect_min_keep(kept, kept & ((more_probable < top_p) | (q == q.max())))

    if min_p > 0:
        kept = respect_min_keep(kept, kept & (z >= z[kept].max() + np.log(min_p)))
    return z, _reference_after_min_p(z, kept, settings, respect_min_keep)


def _log_q(z: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Log softmax of ``z`` over ``kept``; -inf elsewhere."""
    return np.where(kept, z - _logsumexp(z[kept]), -np.inf)


def _entropy(log_q: np.ndarray) -> float:
    finite = log_q > -np.inf
    return float(-np.sum(np.exp(log_q[finite]) * log_q[finite]))


def _reference_after_min_p(z: np.ndarray, kept: np.ndarray, settings: _Settings,
                           respect_min_keep: Any) -> np.ndarray:
    """Typical-p, epsilon, eta, top-n-sigma, XTC on one row; its final log-probabilities."""
    if settings.typical_p < 1:
        log_q = _log_q(z, kept)
        score = np.where(kept, np.abs(-log_q - _entropy(log_q)), np.inf)
        order = np.argsort(score, kind="stable")
        cumulative = np.cumsum(np.exp(log_q[order]))
        # the first position whose cumulative mass reaches p; every token scoring at most its score
        position = min(int(np.searchsorted(cumulative, settings.typical_p * cumulative[-1], side="left")),
                       score.size - 1)
        at_least = min(settings.min_keep, int(kept.sum())) - 1  # the min_keep most typical
        kept = kept & (score <= max(score[order[position]], score[order[at_least]]))
    if settings.epsilon > 0:
        kept = respect_min_keep(kept, kept & (_log_q(z, kept) >= np.log(settings.epsilon)))
    if settings.eta > 0:
        log_q = _log_q(z, kept)
        log_eta = np.log(settings.eta)
        kept = respect_min_keep(kept, kept & (log_q >= min(log_eta, 0.5 * log_eta - _entropy(log_q))))
    if settings.top_n_sigma < np.inf:
        values = z[kept]
        kept = respect_min_keep(kept, kept & (z >= values.max() - settings.top_n_sigma * values.std()))
    log_p = _log_q(z, kept)
    if settings.xtc_probability > 0:
        above = kept & (log_p >= (np.log(settings.xtc_threshold) if settings.xtc_threshold > 0 else -np.inf))
        if above.sum() >= 2:
            remain = kept & (z <= z[above].min())
            if remain.sum() >= settings.min_keep:
                q = np.exp(log_p)
                mixed = (1 - settings.xtc_probability) * q + settings.xtc_probability * np.where(
                    remain, q / q[remain].sum(), 0.0)
                with np.errstate(divide="ignore"):
                    log_p = np.log(mixed)
    return log_p


def _row_inputs(value: Any, batch_shape: tuple[int, ...], per_token: bool) -> np.ndarray | None:
    """A shaping input as one entry (or one vector) per flattened row; None stays None."""
    if value is None:
        return None
    array = np.asarray(value)
    if not per_token:
        return np.broadcast_to(array, batch_shape).reshape(-1)
    return np.broadcast_to(array, (*batch_shape, array.shape[-1])).reshape(-1, array.shape[-1])


def _mask(row: np.ndarray, vocab: int) -> np.ndarray:
    """A boolean mask row, or a packed row of uint32 words read bit by bit."""
    if row.dtype == bool:
        return row
    return np.array([bool((int(row[t // 32]) >> (t % 32)) & 1) for t in range(vocab)])


def _dry_row(row: np.ndarray, seen: list[int], multiplier: Any, base: Any, allowed: Any, last_n: Any,
             breakers: Any) -> None:
    """DRY's penalty on one float64 row, in place, by direct comparison (llama.cpp's definition).

    For every earlier position ``p`` of the searched window, the match length ``n`` is counted
    token by token backwards from ``p`` and from the window's end, stopping at a breaker (or a
    non-id); the token after ``p`` takes the largest ``n`` of its positions.
    """
    m, b, allowed, last_n = float(multiplier), float(base), int(allowed), int(last_n)
    if m == 0 or last_n == 0:
        return
    window = seen if last_n < 0 else seen[max(len(seen) - last_n, 0):]
    stops = set() if breakers is None else {int(t) for t in breakers if t != -1}

    def stop(token: int) -> bool:
        return token in stops or not 0 <= token < len(row)

    longest: dict[int, int] = {}
    for p in range(len(window) - 1):
        n = 0
        while n <= p and window[p - n] == window[-1 - n] and not stop(window[-1 - n]):
            n += 1
        token = window[p + 1]
        if n >= allowed and not stop(token):
            longest[token] = max(longest.get(token, 0), n)
    clamp = math.floor(88.7228391 / math.log(b)) if b > 1.000001 else math.inf
    for token, n in longest.items():
        row[token] -= m * b ** min(n - allowed, clamp)


def _shaped(x: np.ndarray, resolved: SamplingParams, batch_shape: tuple[int, ...]) -> np.ndarray:  # noqa: C901
    """Bias, penalties and masks applied plainly, row by row, token by token, in float64."""
    out = x.copy()
    vocab = x.shape[1]
    per_token = ("logit_bias", "allowed", "banned", "history")
    sparse = None
    if isinstance(resolved.logit_bias, tuple):  # (ids, values): each (..., M)
        sparse = tuple(_row_inputs(part, batch_shape, True) for part in resolved.logit_bias)
        resolved = dataclasses.replace(resolved, logit_bias=None)
    words = None
    if resolved.bad_words is not None:  # (..., W, M): the sequences of each row
        array = np.asarray(resolved.bad_words)
        words = np.broadcast_to(array, (*batch_shape, *array.shape[-2:])).reshape(-1, *array.shape[-2:])
        resolved = dataclasses.replace(resolved, bad_words=None)
    dry = None
    if resolved.dry is not None:  # each field per row; the breakers (..., S)
        dry = [_row_inputs(value, batch_shape, False) for value in resolved.dry[:4]]
        breakers = resolved.dry.breakers
        dry.append(None if breakers is None else _row_inputs(breakers, batch_shape, True))
        resolved = dataclasses.replace(resolved, dry=None)
    inputs = {name: _row_inputs(getattr(resolved, name), batch_shape, name in per_token)
              for name in SHAPING_FIELDS}
    for i in range(out.shape[0]):
        if sparse is not None:
            for token, value in zip(sparse[0][i], sparse[1][i], strict=True):
                if token != -1:
                    out[i, int(token)] += float(value)
        elif inputs["logit_bias"] is not None:
            out[i] += inputs["logit_bias"][i].astype(np.float64)
        length = 0
        if inputs["history"] is not None:
            history = inputs["history"][i]
            length = len(history) if inputs["history_lengths"] is None else int(inputs["history_lengths"][i])
            count: dict[int, int] = {}
            for token in history[:length]:
                if token != -1:
                    count[int(token)] = count.get(int(token), 0) + 1
            for token, c in count.items():
                if inputs["repetition_penalty"] is not None:
                    r = float(inputs["repetition_penalty"][i])
                    out[i, token] = out[i, token] / r if out[i, token] > 0 else out[i, token] * r
                if inputs["frequency_penalty"] is not None:
                    out[i, token] -= c * float(inputs["frequency_penalty"][i])
                if inputs["presence_penalty"] is not None:
                    out[i, token] -= float(inputs["presence_penalty"][i])
            if dry is not None:
                _dry_row(out[i], [int(t) for t in history[:length]], *(v if v is None else v[i] for v in dry))
        if inputs["allowed"] is not None:
            out[i, ~_mask(inputs["allowed"][i], vocab)] = -np.inf
        if inputs["banned"] is not None:
            out[i, _mask(inputs["banned"][i], vocab)] = -np.inf
        if inputs["vocab_size"] is not None:
            out[i, int(inputs["vocab_size"][i]):] = -np.inf
        seen = [] if inputs["history"] is None else [int(t) for t in inputs["history"][i][:length]]
        if inputs["no_repeat_ngram_size"] is not None:
            n = int(inputs["no_repeat_ngram_size"][i])
            for start in range(len(seen) - n + 1 if n >= 1 else 0):  # Hugging Face's rule
                if seen[start:start + n - 1] == seen[len(seen) - n + 1:] and seen[start + n - 1] != -1:
                    out[i, seen[start + n - 1]] = -np.inf
        if words is not None:
            for word in words[i]:
                word = [int(t) for t in word if t != -1]
                if word and (len(word) == 1 or seen[len(seen) - len(word) + 1:] == word[:-1]):
                    out[i, word[-1]] = -np.inf
    return out


def reference_probs(
    logits: Any,
    *,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    typical_p: Any = None,
    epsilon: Any = None,
    eta: Any = None,
    top_n_sigma: Any = None,
    xtc_threshold: Any = None,
    xtc_probability: Any = None,
    logit_bias: Any = None,
    allowed: Any = None,
    banned: Any = None,
    vocab_size: Any = None,
    history: Any = None,
    history_lengths: Any = None,
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    no_repeat_ngram_size: Any = None,
    bad_words: Any = None,
    dry: Any = None,
    params: SamplingParams | None = None,
) -> np.ndarray:
    """The processed distribution, computed plainly in float64 NumPy: the test oracle.

    Takes the same parameters as `agnostic_sampling.probs` (the logit shaping first) and returns
    float64 probabilities of the same shape as ``logits``. Slow on purpose (a Python loop over
    rows, a quadratic top-p); use it on small vocabularies or a few rows.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.stats import reference_probs
        >>> reference_probs(np.log([0.5, 0.3, 0.2]), top_p=0.6).round(3).tolist()
        [0.625, 0.375, 0.0]
    """
    if isinstance(params, Chain):  # with the shaping keywords, applied first
        shaping = dict(logit_bias=logit_bias, allowed=allowed, banned=banned, vocab_size=vocab_size,
                       history=history, history_lengths=history_lengths,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words, dry=dry)
        shape = np.shape(logits)
        return _chain_rows(logits, with_keywords(params, shape[:-1], shape[-1], shaping))[0].reshape(shape)
    x, settings = _rows_and_settings(
        logits, params, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, min_keep=min_keep,
        typical_p=typical_p, epsilon=epsilon, eta=eta, top_n_sigma=top_n_sigma, xtc_threshold=xtc_threshold,
        xtc_probability=xtc_probability, logit_bias=logit_bias, allowed=allowed, banned=banned,
        vocab_size=vocab_size, history=history, history_lengths=history_lengths,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words,
        dry=dry)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        out[i] = _reference_row(row, settings[i])
    return out.reshape(np.shape(logits))


def _rows_and_settings(logits: Any, params: SamplingParams | None,
                       **keywords: Any) -> tuple[np.ndarray, list[_Settings]]:
    """The logits as float64 rows (N, V), each checked, and each row's parameters."""
    x = np.asarray(logits)
    if x.dtype.name == "bfloat16":
        x = x.astype(np.float32)
    x = x.astype(np.float64)
    resolved = resolve_params(params, **keywords)
    batch_shape = x.shape[:-1]
    validate_params(resolved, batch_shape, x.shape[-1])

    def per_row(name: str) -> np.ndarray:
        value = getattr(resolved, name)
        column = np.asarray(OFF[name] if value is None else value, np.float64)
        return np.broadcast_to(column, batch_shape).reshape(-1)

    rows = x.reshape(-1, x.shape[-1])
    if any(getattr(resolved, name) is not None for name in SHAPING_FIELDS):
        rows = _shaped(rows, resolved, batch_shape)
    columns = [per_row(name) for name in FIELDS]
    settings = []
    for i, row in enumerate(rows):
        if np.isnan(row).any() or np.isposinf(row).any() or not np.isfinite(row).any():
            raise ValueError(f"logits row {i} must hold a finite logit and no NaN or +inf")
        values = {name: column[i] for name, column in zip(FIELDS, columns, strict=True)}
        settings.append(_Settings(**{name: (int if name in ("top_k", "min_keep") else float)(value)
                                     for name, value in values.items()}))
    return rows, settings


def _logsumexp(z: np.ndarray) -> float:
    top = z.max()
    return float(top + np.log(np.exp(z - top).sum()))


def reference_logprobs(
    logits: Any,
    ids: Any,
    *,
    kind: str = "processed",
    top_n: int = 0,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    typical_p: Any = None,
    epsilon: Any = None,
    eta: Any = None,
    top_n_sigma: Any = None,
    xtc_threshold: Any = None,
    xtc_probability: Any = None,
    params: SamplingParams | None = None,
) -> LogprobsResult:
    """Log-probabilities computed plainly in float64 NumPy: the oracle for `agnostic_sampling.logprobs`.

    The same arguments and the same result fields, as float64 and int64 NumPy arrays; every
    log-probability is ``z - logsumexp(z over the distribution's support)``, never the log of a
    probability, so it is finite wherever the probability is positive. Slow on purpose (a Python
    loop over rows); use it on small vocabularies or a few rows. Inputs are not validated beyond
    the logits and the parameters.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.stats import reference_logprobs
        >>> result = reference_logprobs(np.log([0.5, 0.3, 0.2]), 1, top_p=0.6)
        >>> round(float(result.token), 4), round(float(np.exp(result.kept_log_mass)), 4)
        (-0.9808, 0.8)
    """
    if isinstance(params, Chain):
        return _chain_logprobs(logits, ids, params, kind, top_n)
    x, settings = _rows_and_settings(logits, params, temperature=temperature, top_k=top_k, top_p=top_p,
                                     min_p=min_p, min_keep=min_keep, typical_p=typical_p, epsilon=epsilon,
                                     eta=eta, top_n_sigma=top_n_sigma, xtc_threshold=xtc_threshold,
                                     xtc_probability=xtc_probability)
    n_rows, vocab = x.shape
    ids = np.broadcast_to(np.asarray(ids), np.shape(logits)[:-1]).reshape(-1)
    token = np.empty(n_rows)
    rank = np.empty(n_rows, np.int64)
    top_ids = np.empty((n_rows, top_n), np.int64)
    top_logprobs = np.empty((n_rows, top_n))
    kept_log_mass = np.empty(n_rows)
    kept_count = np.empty(n_rows, np.int64)
    for i, row in enumerate(x):
        if settings[i].temperature == 0:
            kept = np.arange(vocab) == np.argmax(row)
            processed = np.where(kept, 0.0, -np.inf)
            kept_log_mass[i] = 0.0
        else:
            z, processed = _reference_kept(row, settings[i])
            kept = processed > -np.inf
            kept_log_mass[i] = _logsumexp(z[kept]) - _logsumexp(z[np.isfinite(z)])
        shifted = row - row.max()
        raw = shifted - _logsumexp(shifted[np.isfinite(shifted)])
        values = processed if kind == "processed" else raw
        token[i] = values[ids[i]]
        rank[i] = 1 + np.count_nonzero(row > row[ids[i]])
        order = np.lexsort((np.arange(vocab), -values))[:top_n]
        top_ids[i], top_logprobs[i] = order, values[order]
        kept_count[i] = np.count_nonzero(kept)
    batch_shape = np.shape(logits)[:-1]
    top_shape = batch_shape + (top_n,)
    return LogprobsResult(token.reshape(batch_shape), rank.reshape(batch_shape), top_ids.reshape(top_shape),
                          top_logprobs.reshape(top_shape), kept_log_mass.reshape(batch_shape),
                          kept_count.reshape(batch_shape))


# --------------------------------------------------------------------------------------------
# Chains: the same steps, one at a time, in the order given


_OFF_SETTINGS = _Settings(**{name: OFF[name] for name in _Settings._fields})


def _top_with_ties(z: np.ndarray, kept: np.ndarray, n: int) -> np.ndarray:
    """The n largest of ``z`` over ``kept``, and everything tied with the n-th."""
    values = np.sort(z[kept])[::-1]
    return kept if n >= values.size else kept & (z >= values[n - 1])


def _chain_step(z: np.ndarray, kind: str, values: list[float], min_keep: int) -> np.ndarray:
    """One step of a chain on one row: ``z`` in, ``z`` out (``-inf`` outside the kept set)."""
    kept = np.isfinite(z)

    def respect_min_keep(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return after | _top_with_ties(z, before, min_keep)

    if kind == "temperature":
        if not values[0] >= np.finfo(np.float32).tiny:  # greedy on the row as it stands
            return np.where(np.arange(z.size) == np.argmax(z), 0.0, -np.inf)
        return (z - z[kept].max()) / values[0]
    if kind in ("top_k", "top_p", "min_p"):
        value = int(values[0]) if kind == "top_k" else values[0]
        settings = _OFF_SETTINGS._replace(temperature=1.0, min_keep=min_keep, **{kind: value})
        shifted, log_p = _reference_kept(z, settings)
        return np.where(log_p > -np.inf, shifted, -np.inf)
    names = ("xtc_threshold", "xtc_probability") if kind == "xtc" else (kind,)
    settings = _OFF_SETTINGS._replace(min_keep=min_keep, **dict(zip(names, values, strict=True)))
    return _reference_after_min_p(z - z[kept].max(), kept, settings, respect_min_keep)


def _chain_rows(logits: Any, chain: Chain,
                only: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The chain's probabilities (N, V) and its result's log-probabilities, row by row."""
    x = np.asarray(logits)
    x = (x.astype(np.float32) if x.dtype.name == "bfloat16" else x).astype(np.float64)
    batch_shape = x.shape[:-1]
    validate_chain(chain, batch_shape)
    rows = x.reshape(-1, x.shape[-1])
    if chain.shaping is not None:
        rows = _shaped(rows, chain.shaping, batch_shape)

    def per_row(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float64), batch_shape).reshape(-1)

    steps = [(step.kind, [per_row(v) for v in step.values]) for step in chain.steps
             if only is None or step.kind in only]
    min_keep = per_row(chain.min_keep)
    log_p = np.empty_like(rows)
    for i, row in enumerate(rows):
        if np.isnan(row).any() or np.isposinf(row).any() or not np.isfinite(row).any():
            raise ValueError(f"logits row {i} must hold a finite logit and no NaN or +inf")
        z = row - row.max()
        for kind, columns in steps:
            z = _chain_step(z, kind, [float(c[i]) for c in columns], int(min_keep[i]))
        log_p[i] = _log_q(z, np.isfinite(z))
    return np.exp(log_p), log_p


def _chain_logprobs(logits: Any, ids: Any, chain: Chain, kind: str, top_n: int) -> LogprobsResult:
    _, processed = _chain_rows(logits, chain)
    _, tempered = _chain_rows(logits, chain, only=("temperature",))
    x = np.asarray(logits)
    x = (x.astype(np.float32) if x.dtype.name == "bfloat16" else x).astype(np.float64)
    rows = x.reshape(-1, x.shape[-1])
    ids = np.broadcast_to(np.asarray(ids), x.shape[:-1]).reshape(-1)
    fields: list[list[Any]] = [[] for _ in LogprobsResult._fields]
    for i, row in enumerate(rows):
        raw = row - _logsumexp(row)
        values = processed[i] if kind == "processed" else raw
        kept = processed[i] > -np.inf
        order = np.lexsort((np.arange(row.size), -values))[:top_n]
        greedy = np.count_nonzero(tempered[i] > -np.inf) <= 1
        mass = 0.0 if greedy else min(_logsumexp(tempered[i][kept]), 0.0)
        for field, value in zip(fields, (values[ids[i]], 1 + np.count_nonzero(row > row[ids[i]]), order,
                                         values[order], mass, np.count_nonzero(kept)), strict=True):
            field.append(value)
    batch_shape = x.shape[:-1]
    top_shape = batch_shape + (top_n,)
    shapes = (batch_shape, batch_shape, top_shape, top_shape, batch_shape, batch_shape)
    dtypes = (np.float64, np.int64, np.int64, np.float64, np.float64, np.int64)
    return LogprobsResult(*(np.asarray(f, d).reshape(shape) for f, d, shape in zip(fields, dtypes, shapes,
                                                                                   strict=True)))


def reference_mirostat(logits: Any, ids: Any, mu: Any, *, tau: Any, eta: Any,
                       temperature: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mirostat v2 in plain float64: each row's distribution at state ``mu``, and the next state.

    Per row, written from llama.cpp's definition rather than through the epsilon step: ``q`` the
    softmax of the tempered logits (one-hot on the first maximum at temperature 0); keep the
    tokens of surprise ``-log2 q <= mu`` (the most probable ones if none); renormalise to ``p``;
    the next state is ``mu - eta * (-log2 p[id] - tau)``.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.stats import reference_mirostat
        >>> p, mu = reference_mirostat(np.log([0.5, 0.3, 0.15, 0.05]), 1, 2.0, tau=1.5, eta=0.1)
        >>> p.round(3).tolist(), round(float(mu), 4)
        ([0.625, 0.375, 0.0, 0.0], 2.0085)
    """
    x = np.asarray(logits)
    x = (x.astype(np.float32) if x.dtype.name == "bfloat16" else x).astype(np.float64)
    batch_shape = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])

    def per_row(value: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float64), batch_shape).reshape(-1)

    ids, mu, tau, eta, temperature = (per_row(v) for v in (ids, mu, tau, eta, temperature))
    probs = np.zeros_like(rows)
    next_mu = np.empty(rows.shape[0])
    for i, row in enumerate(rows):
        if temperature[i] < np.finfo(np.float32).tiny:
            q = (np.arange(row.size) == np.argmax(row)).astype(np.float64)
        else:
            z = (row - row.max()) / temperature[i]
            q = np.exp(z - _logsumexp(z))
        with np.errstate(divide="ignore"):
            surprise = -np.log2(q)
        kept = surprise <= mu[i]
        if not kept.any():
            kept = q == q.max()
        probs[i] = np.where(kept, q, 0) / q[kept].sum()
        with np.errstate(divide="ignore"):  # an id outside the kept set: surprise inf
            next_mu[i] = mu[i] - eta[i] * (-np.log2(probs[i][int(ids[i])]) - tau[i])
    return probs.reshape(x.shape), next_mu.reshape(batch_shape)
