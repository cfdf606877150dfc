"""What the NumPy and the JAX decode loops share: the validated request and two small helpers.

`Request` is built once by ``generate.py`` (all validation that needs no model call happens
there); the loops read it and call the backend module's functions (``sample``, ``logprobs``)
directly.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

from agnostic_sampling._chain import Chain
from agnostic_sampling._params import SamplingParams
from agnostic_sampling.backends._loop_shaping import LoopShaping

__all__ = ["Request", "check_top_logprobs", "wrong_shape"]


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
