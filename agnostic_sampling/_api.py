"""The public sampling functions: validate, pick the backend once, delegate.

Every backend module defines the same functions (``asarray``, ``as_key``, ``greedy``,
``sample``, ``process_logits``, ``probs``) and holds array code only. Each returns its result
with a per-row status code; concrete bad rows are reported through ``_checks``, the one
place the decode loops use too.
"""

from __future__ import annotations

from typing import Any

from agnostic_sampling import _dispatch
from agnostic_sampling._checks import check_logits
from agnostic_sampling._checks import raise_bad_rows
from agnostic_sampling._keys import as_backend_key
from agnostic_sampling._params import SHAPING_FIELDS
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import resolve_params
from agnostic_sampling._params import validate_params

__all__ = ["greedy", "probs", "process_logits", "sample"]


def _prepare(logits: Any, backend: str | None) -> tuple[Any, Any]:
    """Pick the backend and check the logits' dtype and shape (pure metadata, no array pass)."""
    name = _dispatch.backend_name(logits, backend)
    module = _dispatch.get_backend(name)
    array = module.asarray(logits)
    check_logits(array)
    return module, array


def _params(params: SamplingParams | None, batch_shape: tuple[int, ...], vocab: int | None = None,
            **keywords: Any) -> SamplingParams:
    """The parameters from either spelling, checked against the batch shape and vocabulary."""
    resolved = resolve_params(params, **keywords)
    validate_params(resolved, batch_shape, vocab)
    return resolved


def _shaping_given(params: SamplingParams) -> bool:
    return any(getattr(params, name) is not None for name in SHAPING_FIELDS)


def sample(
    key: Any,
    logits: Any,
    *,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    logit_bias: Any = None,
    allowed: Any = None,
    banned: Any = None,
    vocab_size: Any = None,
    history: Any = None,
    history_lengths: Any = None,
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    params: SamplingParams | None = None,
    backend: str | None = None,
) -> Any:
    """Draw one token id per row from the processed distribution of ``logits``.

    The pipeline is the logit shaping (bias, penalties, masks: README "Logit shaping"), then
    temperature, top-k, top-p, min-p, each step optional and each parameter a scalar or a
    per-row array. A row that the shaping leaves with no finite logit is an error (id ``-1``
    under ``jit``). The draw is exact: a token outside the kept set
    is never returned.

    Args:
        key: NumPy backend: a ``numpy.random.Generator``, an ``int`` seed or a ``SeedSequence``.
            JAX backend: a ``jax.random.key``, a legacy ``PRNGKey``, an ``int``, or one key per row.
        logits: array of shape ``(..., V)``, float16, bfloat16, float32 or float64.
        temperature: ``0`` makes a row greedy; ``1`` leaves it unchanged.
        top_k: keep the ``k`` most likely tokens and all tokens tied with the k-th; ``0`` disables.
        top_p: keep the smallest set whose mass reaches ``p``, with ties; ``1`` disables.
        min_p: keep tokens with probability at least ``min_p`` times the largest; ``0`` disables.
        min_keep: no truncation step leaves fewer than this many tokens.
        logit_bias: ``(..., V)`` added to the logits first (``-inf`` bans a token).
        allowed: tokens a row may take, boolean ``(..., V)`` or a packed bitmask of uint32 words
            ``(..., ceil(V / 32))`` (bit ``j`` of word ``w`` is token ``32 * w + j``).
        banned: tokens a row may not take, in either mask format.
        vocab_size: tokens at or past it are masked (a padded vocabulary's tail).
        history: ``(..., T)`` token ids the penalties count (``-1`` is padding); all of it counts.
        history_lengths: ``(...)`` valid entries per row of ``history`` (default ``T``).
        repetition_penalty: ``r > 0``: a token of the history has its logit divided by ``r`` if
            positive, multiplied by ``r`` if negative (``1`` disables).
        frequency_penalty: subtracted once per occurrence in the history.
        presence_penalty: subtracted once from every token present in the history.
        params: a `SamplingParams` instead of the keywords above (not both).
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``logits``.

    Returns:
        Token ids of shape ``logits.shape[:-1]``: int64 on NumPy, int32 on JAX.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 0.0]], np.float32)
        >>> smp.sample(0, logits, top_k=1).tolist()
        [0, 1]
    """
    module, array = _prepare(logits, backend)
    resolved = _params(params, array.shape[:-1], array.shape[-1], temperature=temperature, top_k=top_k,
                       top_p=top_p, min_p=min_p, min_keep=min_keep, logit_bias=logit_bias, allowed=allowed,
                       banned=banned, vocab_size=vocab_size, history=history, history_lengths=history_lengths,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty)
    rng = as_backend_key(key, module, array)
    ids, status = module.sample(rng, array, resolved)
    raise_bad_rows(status, array.shape, shaped=_shaping_given(resolved))
    return ids


def greedy(logits: Any, *, backend: str | None = None) -> Any:
    """The most likely token of each row (the first index on ties).

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> smp.greedy(np.array([[1.0, 3.0, 3.0], [5.0, 0.0, 1.0]])).tolist()
        [1, 0]
    """
    module, array = _prepare(logits, backend)
    ids, status = module.greedy(array)
    raise_bad_rows(status, array.shape)
    return ids


def process_logits(
    logits: Any,
    *,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    logit_bias: Any = None,
    allowed: Any = None,
    banned: Any = None,
    vocab_size: Any = None,
    history: Any = None,
    history_lengths: Any = None,
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    params: SamplingParams | None = None,
    backend: str | None = None,
) -> Any:
    """The tempered logits with ``-inf`` outside the kept set (same shape as ``logits``).

    Each row is shifted by its maximum before dividing by the temperature, so the most likely
    token has logit 0. A greedy row (``temperature=0``) is 0 at its argmax and ``-inf`` elsewhere.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> smp.process_logits(np.array([3.0, 1.0, 2.0]), top_k=2).tolist()
        [0.0, -inf, -1.0]
    """
    module, array = _prepare(logits, backend)
    resolved = _params(params, array.shape[:-1], array.shape[-1], temperature=temperature, top_k=top_k,
                       top_p=top_p, min_p=min_p, min_keep=min_keep, logit_bias=logit_bias, allowed=allowed,
                       banned=banned, vocab_size=vocab_size, history=history, history_lengths=history_lengths,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty)
    out, status = module.process_logits(array, resolved)
    raise_bad_rows(status, array.shape, shaped=_shaping_given(resolved))
    return out


def probs(
    logits: Any,
    *,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    logit_bias: Any = None,
    allowed: Any = None,
    banned: Any = None,
    vocab_size: Any = None,
    history: Any = None,
    history_lengths: Any = None,
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    params: SamplingParams | None = None,
    backend: str | None = None,
) -> Any:
    """The distribution that `sample` draws from: ``softmax(process_logits(logits, ...))``.

    Takes the keywords of `sample`. Returned as float32 (float64 for float64 input), zero
    outside the kept set.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> smp.probs(np.log(np.array([0.5, 0.3, 0.2])), top_p=0.6).round(3).tolist()
        [0.625, 0.375, 0.0]
    """
    module, array = _prepare(logits, backend)
    resolved = _params(params, array.shape[:-1], array.shape[-1], temperature=temperature, top_k=top_k,
                       top_p=top_p, min_p=min_p, min_keep=min_keep, logit_bias=logit_bias, allowed=allowed,
                       banned=banned, vocab_size=vocab_size, history=history, history_lengths=history_lengths,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty)
    out, status = module.probs(array, resolved)
    raise_bad_rows(status, array.shape, shaped=_shaping_given(resolved))
    return out
