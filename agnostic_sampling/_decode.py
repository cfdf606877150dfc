"""What the NumPy and the JAX decode loops share: the request, validated once, and two small helpers.

`request` checks everything that needs no model call (parameters, key, prompt, lengths, the
loop's shaping) and picks the backend once; the loops (``_generate_numpy``, ``_generate_jax``)
read the `Request` it returns and call the backend module's functions (``sample``,
``logprobs``) directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling import _dispatch
from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import with_keywords
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._keys import as_backend_key
from agnostic_sampling._mirostat import loop_options
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import resolve_params
from agnostic_sampling._params import validate_params
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import per_row
from agnostic_sampling.backends._loop_shaping import LoopShaping
from agnostic_sampling.backends._loop_shaping import sampling_params

__all__ = ["Request", "check_top_logprobs", "positive_int", "request", "wrong_shape"]

_LOGPROB_KINDS = ("processed", "raw")


class Request(NamedTuple):
    """One validated decode request, with its arrays already on the chosen backend."""

    backend: str  # "numpy" or "jax"
    key: Any  # the backend's random state (see agnostic_sampling._keys)
    prompt: Any  # (B, P) integer ids
    lengths: Any  # (B,) ints
    max_new_tokens: int
    eos_ids: tuple[int, ...]  # a row stops after generating any of these (empty: at max_new_tokens)
    pad_id: int
    logprob_kind: str | None  # "processed", "raw", or None: no log-probabilities
    top_logprobs: int  # alternatives per generated position (0: none); needs logprob_kind
    params: SamplingParams | Chain  # without the steps `shaping` applies (the backend's sample applies these)
    shaping: LoopShaping | None  # bias, penalties and min_tokens, applied by the loop; None: none given
    shaping_params: SamplingParams  # the full parameters, for `shape_step`
    min_tokens: Any  # (B,) ints, or None
    mirostat: Any = None  # (tau, eta), each (B,), or None: the truncation steps


def wrong_shape(what: str, got: tuple[int, ...], expected: str, fed: str) -> ValueError:
    """The error for a model or step whose logits have the wrong shape."""
    return ValueError(f"{what} returned logits of shape {tuple(got)}; "
                      f"expected {expected} for ids of shape {fed}")


def check_top_logprobs(top_logprobs: int, vocab: int) -> None:
    """Refuse ``top_logprobs`` above the vocabulary size, known once the model has been called."""
    if top_logprobs > vocab:
        raise ValueError(f"top_logprobs must be in [0, {vocab}] (the vocabulary size of the model's "
                         f"logits), got {top_logprobs}")



def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a clear error naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {int(value)}")
    return int(value)


def _token_id(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int token id, got {type(value).__name__} {value!r}")
    return int(value)


def _logprob_options(return_logprobs: Any, top_logprobs: Any) -> tuple[str | None, int]:
    """``(kind or None, top_n)`` from `generate`'s ``return_logprobs`` and ``top_logprobs``."""
    if return_logprobs is None or (isinstance(return_logprobs, (bool, np.bool_)) and not return_logprobs):
        kind = None
    elif isinstance(return_logprobs, (bool, np.bool_)):
        kind = "processed"
    elif isinstance(return_logprobs, str) and return_logprobs in _LOGPROB_KINDS:
        kind = return_logprobs
    else:
        raise ValueError(f"return_logprobs must be one of False, True, 'processed' (the same as True) "
                         f"or 'raw', got {return_logprobs!r}")
    if isinstance(top_logprobs, (bool, np.bool_)) or not isinstance(top_logprobs, (int, np.integer)):
        raise TypeError(f"top_logprobs must be an int (static on JAX), got "
                        f"{type(top_logprobs).__name__} {top_logprobs!r}")
    if top_logprobs < 0:
        raise ValueError(f"top_logprobs must be >= 0 (how many alternatives per position), got "
                         f"{int(top_logprobs)}")
    if top_logprobs and kind is None:
        raise ValueError(f"top_logprobs={int(top_logprobs)} needs return_logprobs: pass "
                         f"return_logprobs='processed' (the sampling distribution) or 'raw' "
                         f"(log_softmax of the logits) to say which distribution they come from")
    return kind, int(top_logprobs)


def request(key: Any, prompt: Any, max_new_tokens: Any, eos_id: Any, pad_id: Any, prompt_lengths: Any,
            return_logprobs: Any, top_logprobs: Any, backend: str | None, params: SamplingParams | None,
            penalty_scope: Any, penalty_window: Any, min_tokens: Any, mirostat: Any,
            **keywords: Any) -> Request:
    """Validate everything that can be checked before the loop, and pick the backend once.

    The sampling parameters are validated here against the batch shape ``(B,)``, and the key is
    converted here, so the loops call the backend's functions directly at every position.
    """
    name = _dispatch.backend_name(prompt, backend)
    module = _dispatch.get_backend(name)  # the JAX backend registers SamplingParams as a pytree
    prompt = module.asarray(prompt)
    if prompt.ndim != 2:
        hint = "; for one prompt use prompt[None]" if prompt.ndim == 1 else ""
        raise ValueError(f"prompt must have shape (batch, length), got shape {tuple(prompt.shape)}{hint}")
    dtype = np.dtype(prompt.dtype)
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"prompt must hold integer token ids, got dtype {dtype}")
    batch, width = prompt.shape
    if batch == 0 or width == 0:
        raise ValueError(f"prompt is empty (shape {tuple(prompt.shape)}); give at least one token per row")
    max_new_tokens = positive_int("max_new_tokens", max_new_tokens)
    eos_ids = _eos_ids(eos_id)
    pad_id = _token_id("pad_id", pad_id)
    kind, top_n = _logprob_options(return_logprobs, top_logprobs)

    chain = None
    if isinstance(params, Chain):  # its shaping keywords are checked here, its steps run by the backend
        chain = with_keywords(params, (batch,), None, keywords, history_supplied=True)
        params, keywords = chain.as_params(), {}
        if params is None:
            params = chain.shaping or SamplingParams()
        else:
            chain = None  # the default order: the keyword path
    resolved = resolve_params(params, **keywords)
    for field in ("history", "history_lengths"):
        if getattr(resolved, field) is not None:
            raise ValueError(f"the decode loops count each row's own history (its prompt and generated "
                             f"tokens) for the penalties: do not pass {field}= (penalty_scope and "
                             f"penalty_window say what counts)")
    validate_params(resolved, (batch,), history_supplied=True)
    shaping, min_tokens = _loop_shaping(resolved, penalty_scope, penalty_window, min_tokens, eos_ids, batch)
    lengths = module.asarray(_lengths(prompt_lengths, batch, width, name))
    rng = as_backend_key(key, module, prompt, argument="prompt")
    if isinstance(rng, SeedWords):  # one (seed, position) per row, advanced per position by the loop
        rng = per_row(rng, batch, np if name == "numpy" else module.jnp)
    if chain is not None:  # the backend applies the bias and the masks unless the loop shapes
        loop_params = chain if shaping is None else dataclasses.replace(chain, shaping=None)
    else:
        loop_params = resolved if shaping is None else sampling_params(resolved)
    options = loop_options(mirostat, chain if chain is not None else resolved, batch)
    return Request(name, rng, prompt, lengths, max_new_tokens, eos_ids, pad_id, kind, top_n, loop_params,
                   shaping, resolved, min_tokens, options)


def _eos_ids(eos_id: Any) -> tuple[int, ...]:
    """``eos_id`` (``None``, an id or a sequence of ids) as a tuple of ints."""
    if eos_id is None:
        return ()
    if isinstance(eos_id, (list, tuple, np.ndarray)):
        ids = tuple(_token_id("eos_id", i) for i in np.asarray(eos_id).reshape(-1).tolist())
        if not ids:
            raise ValueError("eos_id is an empty sequence; pass None for no EOS")
        return ids
    return (_token_id("eos_id", eos_id),)


_SCOPES = {None: ("all", "output"), "output": ("output", "output"), "prompt_and_output": ("all", "all")}


def _loop_shaping(params: SamplingParams, penalty_scope: Any, penalty_window: Any, min_tokens: Any,  # noqa: C901
                  eos_ids: tuple[int, ...], batch: int) -> tuple[LoopShaping | None, Any]:
    """The loop's static shaping configuration and the ``min_tokens`` per row.

    The configuration is ``None`` when the loop shapes nothing.
    """
    if penalty_scope not in _SCOPES:
        raise ValueError(f"penalty_scope must be None (repetition over prompt and output, frequency "
                         f"and presence over the output, as vLLM), 'output' or 'prompt_and_output', "
                         f"got {penalty_scope!r}")
    if penalty_window is not None:
        penalty_window = positive_int("penalty_window", penalty_window)
    if min_tokens is not None:
        if not eos_ids:
            raise ValueError("min_tokens bans the EOS ids until a row has generated that many: "
                             "it needs eos_id")
        counts = np.asarray(min_tokens)
        if not np.issubdtype(counts.dtype, np.integer) or counts.dtype == bool:
            raise TypeError(f"min_tokens must be integers, got dtype {counts.dtype}")
        try:
            min_tokens = np.broadcast_to(counts, (batch,)).astype(np.int64)
        except ValueError:
            raise ValueError(f"min_tokens has shape {counts.shape}, which does not broadcast to the "
                             f"batch ({batch},)") from None
        if (min_tokens < 0).any():
            raise ValueError(f"min_tokens must be >= 0, got {int(min_tokens.min())}")
    repetition_scope, frequency_scope = _SCOPES[penalty_scope]
    if params.repetition_penalty is None:
        repetition_scope = None
    if params.frequency_penalty is None and params.presence_penalty is None:
        frequency_scope = None
    sequences = any(v is not None for v in (params.no_repeat_ngram_size, params.bad_words, params.dry))
    if repetition_scope is None and frequency_scope is None and min_tokens is None and not sequences:
        return None, None  # the backend's sample applies the bias and the masks
    config = LoopShaping(repetition_scope, frequency_scope, penalty_window, eos_ids, min_tokens is not None,
                         sequences)
    return config, min_tokens


def _lengths(prompt_lengths: Any, batch: int, width: int, backend: str) -> Any:
    """Per-row prompt lengths as a (B,) array (int64 on NumPy, int32 on JAX), checked when concrete."""
    dtype = np.int64 if backend == "numpy" else np.int32
    if prompt_lengths is None:
        return np.full(batch, width, dtype)
    if is_tracer(prompt_lengths):
        if prompt_lengths.shape != (batch,):
            raise ValueError(f"prompt_lengths must have shape ({batch},), got {prompt_lengths.shape}")
        return prompt_lengths.astype("int32")
    lengths = np.asarray(prompt_lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"prompt_lengths must have shape ({batch},) (one per prompt row), "
                         f"got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"prompt_lengths must be integers, got dtype {lengths.dtype}")
    if (lengths < 1).any():
        row = int(np.argmax(lengths < 1))
        raise ValueError(f"prompt row {row} is empty (prompt_lengths[{row}] = {int(lengths[row])}); "
                         "every row needs at least one token")
    if (lengths > width).any():
        row = int(np.argmax(lengths > width))
        raise ValueError(f"prompt_lengths[{row}] = {int(lengths[row])} is longer than the prompt "
                         f"array's width {width}")
    return lengths.astype(dtype)
