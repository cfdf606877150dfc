"""Decode loops: `generate` for a model that maps ids to logits, `generate_with_state` for a step.

The request is validated once (parameters, key, prompt, lengths) by ``_decode.request``; the
NumPy loop lives in ``_generate_numpy``, the JAX loop in ``_generate_jax`` (imported only when the
JAX backend is chosen). Both loops call the backend module's ``sample`` directly at each position.

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

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

from agnostic_sampling import _decode
from agnostic_sampling import _generate_numpy
from agnostic_sampling._chain import Chain
from agnostic_sampling._params import SamplingParams

__all__ = ["GenerateResult", "generate", "generate_with_state"]


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
    request = _decode.request(key, prompt, max_new_tokens, eos_id, pad_id, prompt_lengths, return_logprobs,
                       top_logprobs, backend, params, penalty_scope, penalty_window, min_tokens, mirostat,
                       temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, min_keep=min_keep,
                       typical_p=typical_p, epsilon=epsilon, eta=eta, top_n_sigma=top_n_sigma,
                       xtc_threshold=xtc_threshold, xtc_probability=xtc_probability,
                       logit_bias=logit_bias, allowed=allowed, banned=banned, vocab_size=vocab_size,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words, dry=dry)
    if context_size is not None:
        context_size = _decode.positive_int("context_size", context_size)
    if request.backend == "numpy":
        loop = _generate_numpy.NumpyLoop(request, model=model, context_size=context_size)
        return GenerateResult(*loop.run())
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
    request = _decode.request(key, prompt, max_new_tokens, eos_id, pad_id, prompt_lengths, return_logprobs,
                       top_logprobs, backend, params, penalty_scope, penalty_window, min_tokens, mirostat,
                       temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, min_keep=min_keep,
                       typical_p=typical_p, epsilon=epsilon, eta=eta, top_n_sigma=top_n_sigma,
                       xtc_threshold=xtc_threshold, xtc_probability=xtc_probability,
                       logit_bias=logit_bias, allowed=allowed, banned=banned, vocab_size=vocab_size,
                       repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, bad_words=bad_words, dry=dry)
    if request.backend == "numpy":
        return GenerateResult(*_generate_numpy.NumpyLoop(request, step=step, state=state).run())
    from agnostic_sampling import _generate_jax  # imports JAX: only once the JAX backend is chosen

    return GenerateResult(*_generate_jax.run(request, step, stateful=True, state=state, context_size=None))
