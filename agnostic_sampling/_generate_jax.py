"""The JAX decode loop: one ``lax.while_loop`` over a fixed buffer, compiled once per shape.

Imported by ``generate.py`` only when the JAX backend is chosen. The request arrives validated;
every position calls the JAX backend's ``sample`` (and ``logprobs`` for log-probabilities)
directly, with the key ``jax.random.fold_in(key, t)`` (a `Seed`: its position advanced by ``t + 1``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import Step
from agnostic_sampling._checks import check_logits
from agnostic_sampling._decode import Request
from agnostic_sampling._decode import check_top_logprobs
from agnostic_sampling._decode import wrong_shape
from agnostic_sampling._dry import Dry
from agnostic_sampling._mirostat import next_mu
from agnostic_sampling._mirostat import with_bound
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import advance
from agnostic_sampling.backends import jax as backend
from agnostic_sampling.backends._loop_shaping import LoopShaping
from agnostic_sampling.backends._loop_shaping import advance_counts
from agnostic_sampling.backends._loop_shaping import initial_counts
from agnostic_sampling.backends._loop_shaping import shape_step

__all__ = ["run"]

_STATIC = ("fn", "stateful", "max_new_tokens", "window", "kind", "top_n", "eos_ids", "shaping")


def run(request: Request, fn: Any, *, stateful: bool, state: Any,
        context_size: int | None) -> tuple[Any, Any, Any, Any, Any]:
    """Decode ``request`` with ``fn`` (a model, or a step when ``stateful``).

    Returns:
        ``(ids, num_generated, logprobs, model_calls, state, top_ids, top_logprobs)``, the fields
        of ``GenerateResult``.
    """
    batch, width = request.prompt.shape
    total = width + request.max_new_tokens
    window = total if context_size is None else min(context_size, total)
    shaping = request.shaping
    min_tokens = None if request.min_tokens is None else jnp.asarray(request.min_tokens, jnp.int32)
    try:
        return _decoder(request.key, request.prompt.astype(jnp.int32), request.lengths,
                        _per_row(request.params, batch), _per_row(request.shaping_params, batch)
                        if shaping is not None else None, min_tokens, jnp.int32(request.pad_id), state,
                        None if request.mirostat is None else tuple(jnp.asarray(v, jnp.float32)
                                                                    for v in request.mirostat),
                        fn=fn, stateful=stateful, max_new_tokens=request.max_new_tokens, window=window,
                        kind=request.logprob_kind, top_n=request.top_logprobs, eos_ids=request.eos_ids,
                        shaping=shaping)
    except ValueError as error:
        if "Non-hashable static arguments" in str(error):
            what = "step" if stateful else "model"
            raise TypeError(f"the {what} must be hashable on JAX (it is a static argument of the "
                            f"compiled loop); define a function that calls it, once, and pass that "
                            f"function") from error
        raise


def _per_row(params: SamplingParams | Chain, batch: int) -> SamplingParams | Chain:
    """Every field given as a (B,) array of one dtype.

    New values (scalar or per row) then reuse the compiled loop; ``None`` fields stay ``None``
    (static: the step is compiled out). A `Chain` keeps its order (static) and its shaping.
    """
    if isinstance(params, Chain):
        def column(name: str, value: Any) -> Any:
            dtype = jnp.int32 if isinstance(OFF[name], int) else jnp.float32
            return jnp.broadcast_to(jnp.asarray(value, dtype), (batch,))

        steps = tuple(Step(step.kind, tuple(column(name, value) for name, value in
                                            zip(step.fields, step.values, strict=True)))
                      for step in params.steps)
        shaping = None if params.shaping is None else _per_row(params.shaping, batch)
        return Chain(steps, column("min_keep", params.min_keep), shaping)
    fields = {}
    for name in FIELDS:
        value = getattr(params, name)
        # the integer parameters (top_k, min_keep) are those whose off value is an int
        dtype = jnp.int32 if isinstance(OFF[name], int) else jnp.float32
        fields[name] = None if value is None else jnp.broadcast_to(jnp.asarray(value, dtype), (batch,))
    for name in ("repetition_penalty", "frequency_penalty", "presence_penalty"):
        value = getattr(params, name)
        fields[name] = None if value is None else jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))
    for name in ("vocab_size", "no_repeat_ngram_size"):
        value = getattr(params, name)
        fields[name] = None if value is None else jnp.broadcast_to(jnp.asarray(value, jnp.int32), (batch,))
    if params.bad_words is not None:
        fields["bad_words"] = jnp.asarray(params.bad_words, jnp.int32)
    if params.dry is not None:  # the breakers as given; the other fields per row
        dry = params.dry
        fields["dry"] = Dry(*(jnp.broadcast_to(jnp.asarray(v, d), (batch,)) for v, d in zip(
            dry[:4], (jnp.float32, jnp.float32, jnp.int32, jnp.int32), strict=True)),
            None if dry.breakers is None else jnp.asarray(dry.breakers, jnp.int32))
    for name in ("allowed", "banned"):  # (..., V) or (..., words): as given, on device
        value = getattr(params, name)
        fields[name] = None if value is None else jnp.asarray(value)
    bias = params.logit_bias  # dense (..., V), or sparse (ids, values)
    if bias is not None:
        fields["logit_bias"] = (jnp.asarray(bias[0], jnp.int32), jnp.asarray(bias[1], jnp.float32)) \
            if isinstance(bias, tuple) else jnp.asarray(bias, jnp.float32)
    return SamplingParams(**fields)


def _precision(logits: Any) -> Any:
    """The compute dtype of the pipeline: float32, or float64 where JAX keeps it."""
    return jnp.float64 if logits.dtype == jnp.float64 else jnp.float32


@functools.partial(jax.jit, static_argnames=_STATIC)
def _decoder(key: Any, prompt: Any, lengths: Any, params: SamplingParams,  # noqa: C901
             shaping_params: SamplingParams | None, min_tokens: Any, pad: Any, state: Any, mirostat: Any, *,
             fn: Any,
             stateful: bool, max_new_tokens: int, window: int, kind: str | None, top_n: int,
             eos_ids: tuple[int, ...],
             shaping: LoopShaping | None) -> tuple[Any, ...]:
    batch, width = prompt.shape
    total = width + max_new_tokens
    positions = jnp.arange(total)
    ids = jnp.full((batch, total), pad, jnp.int32)
    ids = ids.at[:, :width].set(jnp.where(positions[None, :width] < lengths[:, None], prompt, pad))
    logprobs = jnp.zeros((batch, total), jnp.float32) if kind else None
    top_ids = jnp.full((batch, total, top_n), -1, jnp.int32) if top_n else None
    top_logprobs = jnp.full((batch, total, top_n), -jnp.inf, jnp.float32) if top_n else None

    def logits_at(t: Any, ids: Any, state: Any) -> tuple[Any, Any]:
        if stateful:
            logits, state = fn(state, ids[:, t])
            if logits.ndim != 2 or logits.shape[0] != batch:
                raise wrong_shape("step", logits.shape, f"(B, V) = ({batch}, V)", f"({batch},)")
        else:
            start = jnp.maximum(t + 1 - window, 0)  # the last `window` positions up to t
            out = fn(lax.dynamic_slice_in_dim(ids, start, window, axis=1))
            if out.ndim != 3 or out.shape[:2] != (batch, window):
                expected = f"(B, t, V) = ({batch}, {window}, V)"
                raise wrong_shape("model", out.shape, expected, f"({batch}, {window})")
            logits = lax.dynamic_index_in_dim(out, t - start, axis=1, keepdims=False)
        logits = backend.asarray(logits)
        check_logits(logits)  # at trace time: dtype and vocabulary size
        check_top_logprobs(top_n, logits.shape[-1])
        return logits, state

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        t, ids, logprobs, top_ids, top_logprobs, finished, generated, calls, state, counts, mu = carry
        logits, state = logits_at(t, ids, state)
        taking = ~finished & (lengths <= t + 1)
        if shaping is not None:
            counts = advance_counts(shaping, counts, ids, lengths, t, jnp)

        def draw() -> tuple[Any, ...]:
            # statuses are traced: a bad row gives token -1, as in a jitted `sample`
            step_key = advance(key, t + 1, jnp) if isinstance(key, SeedWords) else jax.random.fold_in(key, t)
            shaped = logits
            if shaping is not None:  # bias, penalties, sequence bans, min_tokens: the loop's
                shaped = shape_step(shaping, logits.astype(_precision(logits)), counts, generated, min_tokens,
                                    shaping_params, jnp, ids, t)
            step_params = params if mu is None else with_bound(params, mu, jnp)
            tokens, _ = backend.sample(step_key, shaped, step_params)
            # a bad row's -1 clipped into the vocabulary (its log-probabilities are NaN anyway)
            valid = jnp.clip(tokens, 0, logits.shape[-1] - 1)
            moved = mu
            if mu is not None:  # the state moves by the drawn token's surprise
                (surprise, *_), _ = backend.logprobs(shaped, valid, step_params, "processed", 0)
                moved = jnp.where(taking, next_mu(mu, surprise.astype(jnp.float32), *mirostat), mu)
            if kind is None:
                return tokens, *skip()[1:4], moved
            source = logits if kind == "raw" else shaped  # raw: the model's own distribution
            fields, _ = backend.logprobs(source, valid, step_params, kind, top_n)
            token, _, drawn_ids, drawn_top, _, _ = fields
            f32 = jnp.float32
            return tokens, token.astype(f32), drawn_ids.astype(jnp.int32), drawn_top.astype(f32), moved

        def skip() -> tuple[Any, ...]:
            return (jnp.zeros(batch, jnp.int32), jnp.zeros(batch, jnp.float32),
                    jnp.full((batch, top_n), -1, jnp.int32), jnp.full((batch, top_n), -jnp.inf, jnp.float32),
                    mu)

        # positions where every row is still reading its prompt (all of a step's prefill) or
        # has finished need no draw: skip the sampling pipeline there
        tokens, drawn_logprobs, drawn_ids, drawn_top, mu = lax.cond(jnp.any(taking), draw, skip)
        column = jnp.where(taking, tokens, lax.dynamic_index_in_dim(ids, t + 1, axis=1, keepdims=False))
        ids = lax.dynamic_update_index_in_dim(ids, column, t + 1, axis=1)
        if logprobs is not None:
            drawn_logprobs = jnp.where(taking, drawn_logprobs, 0.0)
            logprobs = lax.dynamic_update_index_in_dim(logprobs, drawn_logprobs, t + 1, axis=1)
        if top_n:
            drawn_ids = jnp.where(taking[:, None], drawn_ids, -1)
            drawn_top = jnp.where(taking[:, None], drawn_top, -jnp.inf)
            top_ids = lax.dynamic_update_index_in_dim(top_ids, drawn_ids, t + 1, axis=1)
            top_logprobs = lax.dynamic_update_index_in_dim(top_logprobs, drawn_top, t + 1, axis=1)
        generated = generated + taking
        stopped = generated >= max_new_tokens
        if eos_ids:
            stopped = stopped | jnp.isin(tokens, jnp.asarray(eos_ids, jnp.int32))
        finished = finished | (taking & stopped)
        return t + 1, ids, logprobs, top_ids, top_logprobs, finished, generated, calls + 1, state, counts, mu

    def cond(carry: tuple[Any, ...]) -> Any:
        t, finished = carry[0], carry[5]
        return (t < total - 1) & ~jnp.all(finished)

    first = jnp.int32(0) if stateful else jnp.min(lengths).astype(jnp.int32) - 1
    counts = None
    if shaping is not None:  # the vocabulary from the model's output shape, without running it
        vocab = jax.eval_shape(lambda: logits_at(first, ids, state)[0]).shape[-1]
        counts = initial_counts(shaping, ids, lengths, first, vocab, jnp)
    carry = (first, ids, logprobs, top_ids, top_logprobs, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.int32),
             jnp.int32(0), state, counts, None if mirostat is None else 2 * mirostat[0])
    out = lax.while_loop(cond, body, carry)
    _, ids, logprobs, top_ids, top_logprobs, _, generated, calls, state, _, _ = out
    return ids, generated, logprobs, calls, state if stateful else None, top_ids, top_logprobs
