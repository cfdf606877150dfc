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

from agnostic_sampling._checks import check_logits
from agnostic_sampling._decode import Request
from agnostic_sampling._decode import check_top_logprobs
from agnostic_sampling._decode import wrong_shape
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import OFF
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import advance
from agnostic_sampling.backends import jax as backend

__all__ = ["run"]

_STATIC = ("fn", "stateful", "max_new_tokens", "window", "kind", "top_n")


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
    eos = None if request.eos_id is None else jnp.int32(request.eos_id)
    try:
        return _decoder(request.key, request.prompt.astype(jnp.int32), request.lengths,
                        _per_row(request.params, batch), eos, jnp.int32(request.pad_id), state, fn=fn,
                        stateful=stateful, max_new_tokens=request.max_new_tokens, window=window,
                        kind=request.logprob_kind, top_n=request.top_logprobs)
    except ValueError as error:
        if "Non-hashable static arguments" in str(error):
            what = "step" if stateful else "model"
            raise TypeError(f"the {what} must be hashable on JAX (it is a static argument of the "
                            f"compiled loop); define a function that calls it, once, and pass that "
                            f"function") from error
        raise


def _per_row(params: SamplingParams, batch: int) -> SamplingParams:
    """Every field given as a (B,) array of one dtype, so new values (scalar or per row) reuse
    the compiled loop; ``None`` fields stay ``None`` (static: the step is compiled out)."""
    fields = {}
    for name in FIELDS:
        value = getattr(params, name)
        # the integer parameters (top_k, min_keep) are those whose off value is an int
        dtype = jnp.int32 if isinstance(OFF[name], int) else jnp.float32
        fields[name] = None if value is None else jnp.broadcast_to(jnp.asarray(value, dtype), (batch,))
    return SamplingParams(**fields)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _decoder(key: Any, prompt: Any, lengths: Any, params: SamplingParams, eos: Any, pad: Any,
             state: Any, *, fn: Any, stateful: bool, max_new_tokens: int, window: int,
             kind: str | None, top_n: int) -> tuple[Any, ...]:
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
        t, ids, logprobs, top_ids, top_logprobs, finished, generated, calls, state = carry
        logits, state = logits_at(t, ids, state)
        taking = ~finished & (lengths <= t + 1)

        def draw() -> tuple[Any, ...]:
            # statuses are traced: a bad row gives token -1, as in a jitted `sample`
            step_key = advance(key, t + 1, jnp) if isinstance(key, SeedWords) else jax.random.fold_in(key, t)
            tokens, _ = backend.sample(step_key, logits, params)
            if kind is None:
                return tokens, *skip()[1:]
            # a bad row's -1 clipped into the vocabulary (its log-probabilities are NaN anyway)
            valid = jnp.clip(tokens, 0, logits.shape[-1] - 1)
            (token, _, drawn_ids, drawn_top, _, _), _ = backend.logprobs(logits, valid, params, kind, top_n)
            f32 = jnp.float32
            return tokens, token.astype(f32), drawn_ids.astype(jnp.int32), drawn_top.astype(f32)

        def skip() -> tuple[Any, ...]:
            return (jnp.zeros(batch, jnp.int32), jnp.zeros(batch, jnp.float32),
                    jnp.full((batch, top_n), -1, jnp.int32), jnp.full((batch, top_n), -jnp.inf, jnp.float32))

        # positions where every row is still reading its prompt (all of a step's prefill) or
        # has finished need no draw: skip the sampling pipeline there
        tokens, drawn_logprobs, drawn_ids, drawn_top = lax.cond(jnp.any(taking), draw, skip)
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
        if eos is not None:
            stopped = stopped | (tokens == eos)
        finished = finished | (taking & stopped)
        return t + 1, ids, logprobs, top_ids, top_logprobs, finished, generated, calls + 1, state

    def cond(carry: tuple[Any, ...]) -> Any:
        t, finished = carry[0], carry[5]
        return (t < total - 1) & ~jnp.all(finished)

    first = jnp.int32(0) if stateful else jnp.min(lengths).astype(jnp.int32) - 1
    carry = (first, ids, logprobs, top_ids, top_logprobs, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.int32),
             jnp.int32(0), state)
    _, ids, logprobs, top_ids, top_logprobs, _, generated, calls, state = lax.while_loop(cond, body, carry)
    return ids, generated, logprobs, calls, state if stateful else None, top_ids, top_logprobs
