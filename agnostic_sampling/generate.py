"""Decode loops: `generate` for a model that maps ids to logits, `generate_with_state` for a step.

This module validates a request once (parameters, key, prompt, lengths) and runs the NumPy loop;
the JAX loop lives in ``_generate_jax``, imported only when the JAX backend is chosen. Both loops
call the backend module's ``sample`` directly at each position.

Layout and padding side
-----------------------
The prompt is a ``(B, P)`` array of ids, *right*-padded: row ``b`` holds its ``prompt_lengths[b]``
real tokens at positions ``0 .. L_b - 1``. The result's ``ids`` is ``(B, P + max_new_tokens)``:
each row's prompt, then its generated tokens immediately after it, then ``pad_id``.

Every row advances through the same *position* ``t`` at the same time. At each position the model
produces the logits of position ``t + 1``; a row whose prompt is longer than ``t + 1`` keeps its
prompt token there (teacher forcing), the others take the sampled token. So a row's tokens sit at
positions ``0, 1, 2, ...`` with no holes, exactly as if it were decoded alone: a causal model needs
neither an attention mask nor position ids, and a KV cache is filled one position per call for all
rows. Left padding (the Hugging Face convention) lets all rows start sampling together, but then
the model sees pad tokens in front of short prompts, which changes their logits unless the model
takes a mask, and ``model(ids)`` has no place for one. The price of right padding: rows whose
prompt is longer still consume prompt tokens while short rows already generate.

Keys
----
One draw per row per position, at every position where some row samples (positions where every
row is still reading its prompt or has finished draw nothing). NumPy: a ``Generator`` made from
``key`` (or ``key`` itself) is consumed in order, as by one `sample` call per such position. JAX:
the draw at position ``t`` uses ``jax.random.fold_in(key, t)``. Both forms of the loop therefore
give the same ids for the same key, and the same key always gives the same ids. A `Seed` is never
split: the token written at index ``j`` of ``ids`` is drawn with ``Seed(seed, position + j)``
on both backends, so NumPy and JAX give the same tokens, and each row the tokens it would get
decoded alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling import _dispatch
from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import with_keywords
from agnostic_sampling._checks import check_logits
from agnostic_sampling._checks import raise_bad_rows
from agnostic_sampling._decode import Request
from agnostic_sampling._decode import check_top_logprobs
from agnostic_sampling._decode import wrong_shape
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._keys import as_backend_key
from agnostic_sampling._mirostat import loop_options
from agnostic_sampling._mirostat import next_mu
from agnostic_sampling._mirostat import with_bound
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import resolve_params
from agnostic_sampling._params import validate_params
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import advance
from agnostic_sampling._seed import per_row
from agnostic_sampling.backends import numpy as numpy_backend
from agnostic_sampling.backends._loop_shaping import Counts
from agnostic_sampling.backends._loop_shaping import LoopShaping
from agnostic_sampling.backends._loop_shaping import advance_counts
from agnostic_sampling.backends._loop_shaping import initial_counts
from agnostic_sampling.backends._loop_shaping import sampling_params
from agnostic_sampling.backends._loop_shaping import shape_step

__all__ = ["GenerateResult", "generate", "generate_with_state"]

_LOGPROB_KINDS = ("processed", "raw")


class GenerateResult(NamedTuple):
    """What a decode loop returns (a NamedTuple, so a JAX pytree).

    Attributes:
        ids: ``(B, P + max_new_tokens)``: each row's prompt, its generated tokens, then ``pad_id``.
        num_generated: ``(B,)``: how many tokens each row generated, its EOS included.
        logprobs: ``None`` unless ``return_logprobs`` is set; then an array shaped like ``ids``
            holding each generated token's log-probability (as `logprobs` gives it: under the
            processed distribution, ``log probs(logits, ...)[token]``, for ``True`` or
            ``"processed"``; ``log_softmax(logits)[token]`` for ``"raw"``), and 0 at prompt and
            padding positions, so that a row's sum is the log-probability of its continuation.
            float32 on JAX; on NumPy, the precision `probs` computes in (float64 for float64
            logits).
        model_calls: how many times the model (or step function) was called; on JAX, how many
            iterations the loop ran.
        state: the step function's final state (`generate_with_state`); ``None`` for `generate`.
        top_ids: ``None`` unless ``top_logprobs > 0``; then ``(B, P + max_new_tokens,
            top_logprobs)``: at each generated position, the most likely tokens of the
            distribution the token's log-probability is taken under (`logprobs`'s ``top_ids``:
            descending, ties by smaller index); -1 at prompt and padding positions.
        top_logprobs: ``None`` unless ``top_logprobs > 0``; their log-probabilities, same shape,
            ``-inf`` at prompt and padding positions; the dtype of ``logprobs``.
    """

    ids: Any
    num_generated: Any
    logprobs: Any
    model_calls: Any
    state: Any = None
    top_ids: Any = None
    top_logprobs: Any = None


def generate(
    key: Any,
    model: Callable[[Any], Any],
    prompt: Any,
    *,
    max_new_tokens: int,
    context_size: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    prompt_lengths: Any = None,
    return_logprobs: bool | str = False,
    top_logprobs: int = 0,
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
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    no_repeat_ngram_size: Any = None,
    bad_words: Any = None,
    dry: Any = None,
    penalty_scope: str | None = None,
    penalty_window: int | None = None,
    min_tokens: Any = None,
    mirostat: tuple[Any, Any] | None = None,
    params: SamplingParams | Chain | None = None,
    backend: str | None = None,
) -> GenerateResult:
    """Extend each prompt by sampling from ``model`` until EOS or ``max_new_tokens``.

    ``model(ids)`` takes ids of shape ``(B, t)`` and returns logits ``(B, t, V)``. At each
    position the loop feeds at most the last ``context_size`` tokens and samples the next token
    from the last position's logits with `sample` (every strategy, per-row parameters as there).
    Each row stops at its own ``eos_id``; the loop stops as soon as every row has stopped.

    NumPy: a Python loop; the model gets the growing sequence ``ids[:, max(0, t + 1 - C):t + 1]``
    (any model works) and is not called again once every row has stopped.

    JAX: the whole loop is compiled once, as one ``lax.while_loop`` over a fixed buffer; other
    parameter values, keys, prompts and lengths of the same shapes reuse it. The model is traced
    once and always gets a window of fixed width ``min(context_size, P + max_new_tokens)``;
    positions after the current one hold later prompt tokens or ``pad_id`` (see ``pad_id`` if
    the model masks padding itself). **The model must be causal** (position ``t`` depends only on
    positions ``<= t``): a bidirectional model would see those future positions and cannot be fed
    a fixed buffer. The compiled loop is cached per ``model`` object (a static argument), so pass
    the same callable each time; to decode with weights that change, call `generate` inside your
    own ``jax.jit`` with the weights as an argument. Which sampling steps are ``None`` is static
    too (each combination compiles once).

    Args:
        key: NumPy: a ``numpy.random.Generator`` (consumed), an ``int`` seed or a ``SeedSequence``.
            JAX: a ``jax.random.key``, a legacy ``PRNGKey`` or an ``int``. Either: a `Seed`
            (per row or scalar); the token at index ``j`` of ``ids`` uses ``position + j``.
        model: ``(B, t)`` integer ids -> ``(B, t, V)`` logits.
        prompt: ``(B, P)`` integer ids, right-padded when rows differ in length (see
            ``prompt_lengths``). The backend follows its type, as for `sample`.
        max_new_tokens: how many tokens each row may generate (``>= 1``).
        context_size: feed at most this many trailing tokens to the model; ``None``: all. A
            prompt longer than this is cropped to its last ``context_size`` tokens, as the model
            would be at any later position.
        eos_id: a row stops after generating this id (or any of a sequence of ids); ``None``:
            rows stop at ``max_new_tokens``.
        pad_id: written after each row's last token, and fed to the model: for a row that has
            finished while others continue (both backends) and, on JAX, at the window's
            positions after the current one. A causal model ignores those positions, whatever
            their id, unless it builds its own padding mask from the ids: if ``pad_id`` is the
            id that model masks, the mask covers them and its logits can change (silently on
            JAX: a fully masked position can, for instance, produce NaN that later layers spread
            to earlier positions; NumPy raises on a NaN row). Avoid it by passing a ``pad_id``
            the model does not mask (an ordinary token id is safe: a decoding row is never fed
            ``pad_id`` at or before its current position), or decode with `generate_with_state`,
            whose step gets one token per row and can keep the model's own mask in its state.
        prompt_lengths: ``(B,)`` real length of each row (``1 <= L <= P``); ``None``: all ``P``.
        return_logprobs: also return each generated token's log-probability (one more pass per
            position, through `logprobs`): ``True`` or ``"processed"``: under the distribution the
            token was sampled from; ``"raw"``: under ``log_softmax`` of the model's logits (no
            temperature, no truncation; see the README's "Log-probabilities" section).
        top_logprobs: with ``return_logprobs``, also return this many alternatives per generated
            position (``top_ids`` / ``top_logprobs``), under the same distribution;
            ``0 <= top_logprobs <= V``. Static on JAX (each value compiles once).
        temperature, top_k, top_p, min_p, min_keep, typical_p, epsilon, eta, top_n_sigma,
            xtc_threshold, xtc_probability, params: as in `sample`, per row allowed; ``params``
            may be a `Chain` (its order static on JAX), with the shaping keywords below.
        logit_bias, allowed, banned, vocab_size: as in `sample`, applied at every position.
        repetition_penalty, frequency_penalty, presence_penalty: as in `sample`, over the row's
            own history, which the loop counts (``history=`` is not taken here): see
            ``penalty_scope`` and ``penalty_window``. The counts are carried from position to
            position, ``O(B)`` work each.
        penalty_scope: what the penalties count. ``None`` (the default, as vLLM): the repetition
            penalty counts the prompt and the generated tokens, frequency and presence the
            generated tokens only; ``"output"``: all three the generated tokens only;
            ``"prompt_and_output"``: all three both.
        penalty_window: count only the last this many positions of each row (prompt or output;
            llama.cpp's ``penalty_last_n``); ``None``: every position.
        no_repeat_ngram_size, bad_words, dry: as in `sample`, over the row's prompt and
            generated tokens (DRY's ``last_n``: the last this many of them).
        min_tokens: the EOS ids (``eos_id``) are banned until a row has generated this many
            tokens; a scalar or ``(B,)`` integers ``>= 0``; needs ``eos_id``.
        mirostat: ``(tau, eta)`` (scalars or ``(B,)``): draw each token by `mirostat` instead of
            the truncation steps (temperature and the shaping still apply), each row's state
            starting at ``2 * tau`` and carried from position to position.
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``prompt``.

    Returns:
        A `GenerateResult`: ``ids`` ``(B, P + max_new_tokens)`` (int64 on NumPy, int32 on JAX),
        ``num_generated``, ``logprobs`` (or ``None``), ``model_calls``, and ``top_ids`` /
        ``top_logprobs`` when ``top_logprobs > 0`` (else ``None``).

    Raises:
        ValueError: an empty prompt or row, a length longer than the prompt, ``max_new_tokens
            < 1``, a model that returns logits of the wrong shape (expected and got are named),
            ``return_logprobs`` not one of the values above, ``top_logprobs`` below 0, above
            ``V`` (checked at the first model call, or at trace time on JAX), or set without
            ``return_logprobs``.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> table = np.full((4, 4), -5.0, np.float32)
        >>> table[[0, 1, 2, 3], [1, 2, 3, 3]] = 5.0  # bigram: 0 -> 1 -> 2 -> 3 -> 3
        >>> model = lambda ids: table[ids]  # (B, t) -> (B, t, 4)
        >>> out = smp.generate(0, model, np.array([[0, 1], [2, 0]]), prompt_lengths=[2, 1],
        ...                    max_new_tokens=3, eos_id=3, pad_id=-1, temperature=0)
        >>> out.ids.tolist(), out.num_generated.tolist()
        ([[0, 1, 2, 3, -1], [2, 3, -1, -1, -1]], [2, 1])
    """
    request = _request(key, prompt, max_new_tokens, eos_id, pad_id, prompt_lengths, return_logprobs,
                       top_logprobs, backend, params, penalty_scope, penalty_window, min_tokens, mirostat,
                       temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, min_keep=min_keep,
                       typical_p=typical_p, epsilon=epsilon, eta=eta, top_n_sigma=top_n_sigma,
                       xtc_threshold=xtc_threshold, xtc_probability=xtc_probability,
                       logit_bias=logit_bias, allowed=allowed, banned=banned, vocab_size=vocab_size,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words, dry=dry)
    if context_size is not None:
        context_size = _positive_int("context_size", context_size)
    if request.backend == "numpy":
        return _NumpyLoop(request, model=model, context_size=context_size).run()
    from agnostic_sampling import _generate_jax  # imports JAX: only once the JAX backend is chosen

    return GenerateResult(*_generate_jax.run(request, model, stateful=False, state=None,
                                             context_size=context_size))


def generate_with_state(
    key: Any,
    step: Callable[[Any, Any], tuple[Any, Any]],
    state: Any,
    prompt: Any,
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    prompt_lengths: Any = None,
    return_logprobs: bool | str = False,
    top_logprobs: int = 0,
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
    repetition_penalty: Any = None,
    frequency_penalty: Any = None,
    presence_penalty: Any = None,
    no_repeat_ngram_size: Any = None,
    bad_words: Any = None,
    dry: Any = None,
    penalty_scope: str | None = None,
    penalty_window: int | None = None,
    min_tokens: Any = None,
    mirostat: tuple[Any, Any] | None = None,
    params: SamplingParams | Chain | None = None,
    backend: str | None = None,
) -> GenerateResult:
    """`generate` for a model with a cache: ``step(state, ids) -> (logits, state)``, O(1) per token.

    ``step`` is called once per position, starting at position 0 with ``state`` as given (an
    empty cache), with ``ids`` of shape ``(B,)``: every row's token at that position. It returns
    the logits ``(B, V)`` of the next position and the new state. The prompt is consumed by the
    same calls, one token per call: while a row's prompt lasts, its next token is the prompt's
    and the logits are only used to advance the state; then the sampled token is fed back. All
    rows advance one position per call, so a scalar position counter in the state serves the
    whole batch (see the module docstring on padding). The step owns its context: there is no
    ``context_size`` here; its cache must hold ``P + max_new_tokens`` positions.

    NumPy: a Python loop, stopped as soon as every row has finished. JAX: one compiled
    ``lax.while_loop`` with ``state`` (any pytree of arrays with fixed shapes) in the carry;
    ``step`` is traced once and is a static argument (pass the same callable each time).

    With the same key, `generate_with_state` gives the same ids as `generate` for a model whose
    step computes the same logits.

    Args:
        key, prompt, max_new_tokens, eos_id, pad_id, prompt_lengths, return_logprobs,
            top_logprobs, temperature, top_k, top_p, min_p, min_keep, typical_p, epsilon, eta,
            top_n_sigma, xtc_threshold, xtc_probability, logit_bias, allowed, banned,
            vocab_size, repetition_penalty, frequency_penalty, presence_penalty,
            no_repeat_ngram_size, bad_words, dry, penalty_scope, penalty_window, min_tokens,
            mirostat, params, backend: as in `generate`.
        step: ``(state, ids (B,)) -> (logits (B, V), new_state)``.
        state: the step's initial state.

    Returns:
        A `GenerateResult` whose ``state`` is the step's final state.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> table = np.full((4, 4), -5.0, np.float32)
        >>> table[[0, 1, 2, 3], [1, 2, 3, 3]] = 5.0
        >>> def step(calls, ids):  # a bigram needs no cache; the state counts calls
        ...     return table[ids], calls + 1
        >>> out = smp.generate_with_state(0, step, 0, np.array([[0, 1]]), max_new_tokens=3,
        ...                               eos_id=3, temperature=0)
        >>> out.ids.tolist(), out.state
        ([[0, 1, 2, 3, 0]], 3)
    """
    request = _request(key, prompt, max_new_tokens, eos_id, pad_id, prompt_lengths, return_logprobs,
                       top_logprobs, backend, params, penalty_scope, penalty_window, min_tokens, mirostat,
                       temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, min_keep=min_keep,
                       typical_p=typical_p, epsilon=epsilon, eta=eta, top_n_sigma=top_n_sigma,
                       xtc_threshold=xtc_threshold, xtc_probability=xtc_probability,
                       logit_bias=logit_bias, allowed=allowed, banned=banned, vocab_size=vocab_size,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words, dry=dry)
    if request.backend == "numpy":
        return _NumpyLoop(request, step=step, state=state).run()
    from agnostic_sampling import _generate_jax  # imports JAX: only once the JAX backend is chosen

    return GenerateResult(*_generate_jax.run(request, step, stateful=True, state=state, context_size=None))


# --------------------------------------------------------------------------------------------
# Validation (pure Python and metadata, before any array work)


def _positive_int(name: str, value: Any) -> int:
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


def _request(key: Any, prompt: Any, max_new_tokens: Any, eos_id: Any, pad_id: Any, prompt_lengths: Any,
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
    max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
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
        penalty_window = _positive_int("penalty_window", penalty_window)
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


# --------------------------------------------------------------------------------------------
# NumPy: a Python loop


class _NumpyLoop:
    """One decode on NumPy; ``model`` (the plain form) or ``step`` and ``state`` (the cached form)."""

    def __init__(self, request: Request, *, model: Any = None, context_size: int | None = None,
                 step: Any = None, state: Any = None):
        self.request, self.model, self.context_size = request, model, context_size
        self.step, self.state = step, state
        self.vocab: int | None = None
        self.counts: Counts | None = None  # the penalties' counts, once the vocabulary is known
        self.mu = None if request.mirostat is None else 2 * request.mirostat[0]  # mirostat's states

    def logits_at(self, t: int, ids: np.ndarray) -> np.ndarray:
        """The logits of position ``t + 1`` for every row, ``(B, V)``."""
        batch = ids.shape[0]
        if self.step is not None:
            fed = np.ascontiguousarray(ids[:, t])
            logits, self.state = self.step(self.state, fed)
            logits = np.asarray(logits)
            shape = tuple(np.shape(logits))
            if len(shape) != 2 or shape[0] != batch or shape[1] != (self.vocab or shape[1]):
                raise wrong_shape("step", shape, f"(B, V) = ({batch}, {self.vocab or 'V'})", f"({batch},)")
        else:
            start = 0 if self.context_size is None else max(0, t + 1 - self.context_size)
            window = ids[:, start:t + 1]
            out = np.asarray(self.model(window))
            shape = tuple(np.shape(out))
            if len(shape) != 3 or shape[:2] != window.shape or shape[2] != (self.vocab or shape[2]):
                expected = f"(B, t, V) = ({batch}, {window.shape[1]}, {self.vocab or 'V'})"
                raise wrong_shape("model", shape, expected, str(window.shape))
            logits = out[:, -1]
        self.vocab = shape[-1]
        return logits

    def draw(self, t: int, logits: np.ndarray, generated: np.ndarray, ids: np.ndarray,
             taking: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """One token per row from the logits of position ``t + 1``.

        And when asked, its log-probability, top ids and top log-probabilities; bad logits are
        reported with the position that produced them.
        """
        request = self.request
        try:
            check_logits(logits)
            model_logits = logits
            if request.shaping is not None:  # bias, penalties, sequence bans, min_tokens: the loop's
                precision = np.float64 if logits.dtype == np.float64 else np.float32
                logits = shape_step(request.shaping, logits.astype(precision, copy=False), self.counts,
                                    generated, request.min_tokens, request.shaping_params, np, ids, t)
            key = advance(request.key, t + 1, np) if isinstance(request.key, SeedWords) else request.key
            params = request.params if request.mirostat is None else with_bound(request.params, self.mu, np)
            tokens, status = numpy_backend.sample(key, logits, params)
            raise_bad_rows(status, logits.shape)
            if request.mirostat is not None:  # the state moves by the token's surprise where it was drawn
                (surprise, *_), _ = numpy_backend.logprobs(logits, tokens, params, "processed", 0)
                self.mu = np.where(taking, next_mu(self.mu, surprise, *request.mirostat), self.mu)
        except ValueError as error:
            raise ValueError(f"the logits for position {t + 1} (fed through position {t}): "
                             f"{error}") from error
        if request.logprob_kind is None:
            return tokens, None
        # rows checked above, so the fields are there
        # "raw" is the model's own distribution; "processed" the one the token was drawn from
        source = model_logits if request.logprob_kind == "raw" else logits
        fields, _ = numpy_backend.logprobs(source, tokens, params, request.logprob_kind, request.top_logprobs)
        token, _, top_ids, top_logprobs, _, _ = fields
        return tokens, (token, top_ids, top_logprobs)

    def run(self) -> GenerateResult:  # noqa: C901
        request = self.request
        batch, width = request.prompt.shape
        total = width + request.max_new_tokens
        positions = np.arange(total)
        ids = np.full((batch, total), request.pad_id, np.int64)
        in_prompt = positions[None, :width] < request.lengths[:, None]
        ids[:, :width] = np.where(in_prompt, request.prompt, request.pad_id)
        logprobs = top_ids = top_logprobs = None  # allocated at the first draw, in the logits' precision
        top_n = request.top_logprobs
        finished = np.zeros(batch, bool)
        generated = np.zeros(batch, np.int64)
        first_sampled = int(request.lengths.min()) - 1  # no row samples before this position
        calls = 0
        start = 0 if self.step is not None else first_sampled
        for t in range(start, total - 1):
            logits = self.logits_at(t, ids)
            calls += 1
            if calls == 1:
                check_top_logprobs(top_n, logits.shape[-1])
                if request.shaping is not None:
                    self.counts = initial_counts(request.shaping, ids, request.lengths, start,
                                                 logits.shape[-1], np)
            if request.shaping is not None:
                self.counts = advance_counts(request.shaping, self.counts, ids, request.lengths, t, np)
            taking = ~finished & (request.lengths <= t + 1)
            if not taking.any():
                continue  # every row is reading its prompt (a step's prefill) or has finished
            tokens, drawn = self.draw(t, logits, generated, ids, taking)
            ids[taking, t + 1] = tokens[taking]
            if drawn is not None:
                token, drawn_ids, drawn_top = drawn
                if logprobs is None:
                    logprobs = np.zeros((batch, total), token.dtype)
                    if top_n:
                        top_ids = np.full((batch, total, top_n), -1, np.int64)
                        top_logprobs = np.full((batch, total, top_n), -np.inf, token.dtype)
                logprobs[taking, t + 1] = token[taking]
                if top_n:
                    top_ids[taking, t + 1] = drawn_ids[taking]
                    top_logprobs[taking, t + 1] = drawn_top[taking]
            generated += taking
            stopped = generated >= request.max_new_tokens
            if request.eos_ids:
                stopped |= np.isin(tokens, request.eos_ids)
            finished |= taking & stopped
            if finished.all():
                break
        return GenerateResult(ids, generated, logprobs, calls, self.state, top_ids, top_logprobs)
