"""The public sampling functions: validate, pick the backend once, delegate.

Every backend module defines the same functions (``asarray``, ``as_key``, ``greedy``,
``sample``, ``process_logits``, ``probs``, ``logprobs``) and holds array code only. Each returns
its result with a per-row status code; concrete bad rows are reported through ``_checks``, the
one place the decode loops use too.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling import _dispatch
from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import with_keywords
from agnostic_sampling._checks import check_logits
from agnostic_sampling._checks import raise_bad_rows
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._keys import as_backend_key
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import SHAPING_FIELDS
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import resolve_params
from agnostic_sampling._params import validate_params

__all__ = ["LogprobsResult", "greedy", "logprobs", "probs", "process_logits", "sample"]


def _prepare(logits: Any, backend: str | None) -> tuple[Any, Any]:
    """Pick the backend and check the logits' dtype and shape (pure metadata, no array pass)."""
    if logits is None:
        raise TypeError("logits must be a floating-point array of shape (..., V), got None")
    name = _dispatch.backend_name(logits, backend)
    module = _dispatch.get_backend(name)
    array = module.asarray(logits)
    check_logits(array)
    return module, array


_KEYWORDS = FIELDS + SHAPING_FIELDS  # the keyword spelling of SamplingParams


def _keywords(scope: dict[str, Any]) -> dict[str, Any]:
    """The sampling keywords among a public function's arguments (its ``locals()``)."""
    return {name: scope[name] for name in _KEYWORDS}


def _params(params: SamplingParams | None, batch_shape: tuple[int, ...], vocab: int | None,
            keywords: dict[str, Any]) -> SamplingParams:
    """The parameters from either spelling, checked against the batch shape and vocabulary.

    A `Chain` in the default order becomes its `SamplingParams` (the fast path); in any other
    order it is checked and returned as it is.
    """
    if isinstance(params, Chain):
        params = with_keywords(params, batch_shape, vocab, keywords)
        as_params = params.as_params()
        if as_params is None:
            return params
        params, keywords = as_params, {}
    resolved = resolve_params(params, **keywords)
    validate_params(resolved, batch_shape, vocab)
    return resolved


def _shaping_given(params: SamplingParams | Chain) -> bool:
    if isinstance(params, Chain):
        params = params.shaping
    return params is not None and any(getattr(params, name) is not None for name in SHAPING_FIELDS)


def sample(
    key: Any,
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
    params: SamplingParams | Chain | None = None,
    backend: str | None = None,
) -> Any:
    """Draw one token id per row from the processed distribution of ``logits``.

    The pipeline is the logit shaping (bias, penalties, masks: README "Logit shaping"), then
    temperature, top-k, top-p, min-p, typical-p, epsilon, eta, top-n-sigma and XTC, each step
    optional and each parameter a scalar or a per-row array. A row that the shaping leaves with
    no finite logit is an error (id ``-1`` under ``jit``). The draw is exact: a token outside
    the kept set is never returned.

    Args:
        key: NumPy backend: a ``numpy.random.Generator``, an ``int`` seed or a ``SeedSequence``.
            JAX backend: a ``jax.random.key``, a legacy ``PRNGKey``, an ``int``, or one key per row.
            Either backend: a `Seed` (per-row seed and position; the same uniforms on both).
        logits: array of shape ``(..., V)``, float16, bfloat16, float32 or float64.
        temperature: ``0`` makes a row greedy; ``1`` leaves it unchanged.
        top_k: keep the ``k`` most likely tokens and all tokens tied with the k-th; ``0`` disables.
        top_p: keep the smallest set whose mass reaches ``p``, with ties; ``1`` disables.
        min_p: keep tokens with probability at least ``min_p`` times the largest; ``0`` disables.
        min_keep: no truncation step leaves fewer than this many tokens.
        typical_p: keep the most typical tokens (``|-log q - H|`` smallest) up to mass ``p``;
            ``1`` disables.
        epsilon: remove tokens of probability below ``epsilon``; ``0`` disables.
        eta: remove tokens of probability below ``min(eta, sqrt(eta) * exp(-H))``; ``0`` disables.
        top_n_sigma: keep logits within ``n`` standard deviations of the maximum; ``inf``
            disables.
        xtc_threshold, xtc_probability: with that probability, exclude every token at least as
            probable as the threshold except the least probable of them (both or neither).
        logit_bias: ``(..., V)`` added to the logits first (``-inf`` bans a token), or sparse: a
            tuple ``(ids, values)`` of ``(..., M)`` arrays, ids ``-1`` for padding.
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
        no_repeat_ngram_size: ``n`` per row (``0`` disables, at most 16): a token that would
            complete an n-gram already in the history is banned (Hugging Face's rule).
        bad_words: ``(W, M)`` or ``(..., W, M)`` token sequences right-padded with ``-1``: a
            sequence's last id is banned when the history ends with its other ids.
        dry: a `Dry`: llama.cpp's penalty on the tokens that would extend a sequence repeated
            in the history.
        params: a `SamplingParams` instead of the keywords above (not both), or a `Chain` (the steps
            in the order given; the shaping keywords still apply first).
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``logits``.

    Returns:
        Token ids of shape ``logits.shape[:-1]``: int64 on NumPy, int32 on JAX.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 0.0]], np.float32)
        >>> smp.sample(0, logits, top_k=1).tolist()
        [0, 1]
    """
    keywords = _keywords(locals())
    module, array = _prepare(logits, backend)
    if params is None and _greedy_at_hand(module) and _only_greedy(keywords):
        return _greedy_sample(key, module, array)
    resolved = _params(params, array.shape[:-1], array.shape[-1], keywords)
    rng = as_backend_key(key, module, array)
    ids, status = module.sample(rng, array, resolved)
    raise_bad_rows(status, array.shape, shaped=_shaping_given(resolved))
    return ids


def _greedy_at_hand(module: Any) -> bool:
    """Whether ``module`` is the NumPy backend (whose `greedy` has no traced form to keep apart)."""
    return module is _dispatch.get_backend("numpy")


def _only_greedy(keywords: dict[str, Any]) -> bool:
    """Whether the keywords are the defaults but for a Python ``temperature`` of 0: every row greedy."""
    temperature, min_keep = keywords["temperature"], keywords["min_keep"]
    if type(temperature) not in (int, float) or temperature != 0:
        return False
    if type(min_keep) is not int or min_keep != 1:
        return False
    return all(value is None for name, value in keywords.items() if name not in ("temperature", "min_keep"))


def _greedy_sample(key: Any, module: Any, array: Any) -> Any:
    """NumPy `sample` at ``temperature=0`` on every row, as cheap as `greedy`: the same ids and errors.

    The key is checked, and a ``Generator`` advanced by the two uniforms a row `sample` draws,
    as the general path does (the stream after the call is the same); the rest is `greedy`.
    """
    if type(key) is not int or key < 0:  # a non-negative int seeds a Generator no one sees
        rng = as_backend_key(key, module, array)
        if isinstance(rng, np.random.Generator):
            rng.random((int(np.prod(array.shape[:-1], dtype=np.int64)), 2))
    ids, status = module.greedy(array)
    raise_bad_rows(status, array.shape)
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
    params: SamplingParams | Chain | None = None,
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
    keywords = _keywords(locals())
    module, array = _prepare(logits, backend)
    resolved = _params(params, array.shape[:-1], array.shape[-1], keywords)
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
    params: SamplingParams | Chain | None = None,
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
    keywords = _keywords(locals())
    module, array = _prepare(logits, backend)
    resolved = _params(params, array.shape[:-1], array.shape[-1], keywords)
    out, status = module.probs(array, resolved)
    raise_bad_rows(status, array.shape, shaped=_shaping_given(resolved))
    return out


LOGPROB_KINDS = ("processed", "raw")


class LogprobsResult(NamedTuple):
    """What `logprobs` returns, per row (a NamedTuple, so a pytree on JAX).

    Attributes:
        token: the log-probability of the row's id under the chosen distribution.
        rank: 1-based rank of the id among the row's tokens by raw logit; tied tokens share the
            smaller rank (``1 + count(logit > logit[id])``).
        top_ids: ``(..., top_n)`` the ``top_n`` most likely tokens under the chosen distribution,
            in descending log-probability, ties by smaller index.
        top_logprobs: ``(..., top_n)`` their log-probabilities.
        kept_log_mass: log of the mass that the tempered distribution puts on the kept set (0
            when nothing is truncated, and for greedy rows); the same for both kinds.
        kept_count: how many tokens the sampling parameters keep (1 for greedy rows).
    """

    token: Any
    rank: Any
    top_ids: Any
    top_logprobs: Any
    kept_log_mass: Any
    kept_count: Any


def _check_ids(ids: Any, module: Any, array: Any) -> Any:
    """Check the ids' dtype, shape and (when concrete) range; return them as given or as NumPy."""
    if not (hasattr(ids, "dtype") and hasattr(ids, "shape")):
        ids = np.asarray(ids)
    if module.__name__.endswith(".numpy") and is_tracer(ids):
        raise TypeError("ids is a JAX tracer but the logits are NumPy; pass JAX logits (or backend='jax')")
    dtype = np.dtype(ids.dtype)
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"ids must be an integer array, got dtype {dtype}")
    batch_shape = tuple(array.shape[:-1])
    if tuple(ids.shape) != batch_shape:
        raise ValueError(
            f"ids must have the batch shape of the logits, {batch_shape} (logits.shape[:-1]), "
            f"got shape {tuple(ids.shape)}"
        )
    if not is_tracer(ids):
        concrete = np.asarray(ids)
        vocab = array.shape[-1]
        bad = (concrete < 0) | (concrete >= vocab)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad.reshape(-1))), batch_shape) if batch_shape else ()
            row = first[0] if len(first) == 1 else tuple(int(i) for i in first)
            where = f" at row {row}" if first else ""
            raise ValueError(f"ids must be in [0, {vocab}) (the vocabulary size), got "
                             f"{int(concrete[first])}{where}")
    return ids


def logprobs(
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
    params: SamplingParams | Chain | None = None,
    backend: str | None = None,
) -> LogprobsResult:
    """Log-probabilities of ``ids``, the ``top_n`` alternatives, and the kept set's mass.

    ``kind="processed"`` is the distribution that `sample` draws from with the same keywords:
    the log of `probs`, ``-inf`` outside the kept set; a greedy row (``temperature=0``) is 0 at
    its first argmax and ``-inf`` elsewhere. ``kind="raw"`` is ``log_softmax(logits)``: no
    temperature, no truncation. Both are computed in log space (``z - logsumexp(z)``), so they
    are finite wherever the probability is positive, even where it underflows as a float.

    ``kept_log_mass`` and ``kept_count`` describe the sampling keywords' kept set whatever the
    kind: for a kept token at temperature 1, ``processed = raw - kept_log_mass``. A trainer that
    divides a processed (sampling) probability by a raw (training) one carries that term into
    its importance ratio; see the README's "Log-probabilities" section.

    Args:
        logits: array of shape ``(..., V)``, float16, bfloat16, float32 or float64.
        ids: integer array of shape ``logits.shape[:-1]`` with values in ``[0, V)``, e.g. from
            `sample`. Under ``jax.jit`` an out-of-range id gives ``token`` NaN and ``rank`` 0.
        kind: ``"processed"`` or ``"raw"``.
        top_n: how many alternatives to return per row, ``0 <= top_n <= V`` (static under jit).
        temperature, top_k, top_p, min_p, min_keep, typical_p, epsilon, eta, top_n_sigma,
            xtc_threshold, xtc_probability, params: as in `sample`, per row allowed.
        logit_bias, allowed, banned, vocab_size, history, history_lengths, repetition_penalty,
            frequency_penalty, presence_penalty, no_repeat_ngram_size, bad_words, dry: the logit
            shaping, as in `sample`; processed kind only (the raw kind is the logits as given:
            shaping with ``kind="raw"`` is a ``ValueError``). With shaping, ``rank`` and
            ``top_ids`` are by the shaped logits.
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``logits``.

    Returns:
        A `LogprobsResult`. Log-probabilities are float32 (float64 for float64 logits); ranks,
        ids and counts are int64 on NumPy, int32 on JAX.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
        >>> result = smp.logprobs(logits, 1, top_p=0.6, top_n=2)
        >>> round(float(result.token), 3), int(result.rank), result.top_ids.tolist()
        (-0.981, 2, [0, 1])
        >>> raw = smp.logprobs(logits, 1, kind="raw", top_p=0.6)
        >>> round(float(raw.token - raw.kept_log_mass), 3)  # processed = raw - kept_log_mass
        -0.981
    """
    keywords = _keywords(locals())
    if kind not in LOGPROB_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, LOGPROB_KINDS))}, got {kind!r}")
    module, array = _prepare(logits, backend)
    vocab = array.shape[-1]
    if isinstance(top_n, (bool, np.bool_)) or not isinstance(top_n, (int, np.integer)):
        raise TypeError(f"top_n must be an int (static under jit), got {type(top_n).__name__}")
    if not 0 <= top_n <= vocab:
        raise ValueError(f"top_n must be in [0, {vocab}] (the vocabulary size), got {top_n}")
    ids = _check_ids(ids, module, array)
    resolved = _params(params, array.shape[:-1], vocab, keywords)
    shaped = _shaping_given(resolved)
    if shaped and kind == "raw":
        holder = resolved.shaping if isinstance(resolved, Chain) else resolved
        given = ", ".join(name for name in SHAPING_FIELDS if getattr(holder, name) is not None)
        raise ValueError(f"kind='raw' is log_softmax of the logits as given; logit shaping ({given}) "
                         f"applies to kind='processed' only")
    fields, status = module.logprobs(array, ids, resolved, kind, int(top_n))
    raise_bad_rows(status, array.shape, shaped=shaped)
    return LogprobsResult(*fields)
