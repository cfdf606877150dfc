"""What the NumPy and the JAX decode loops share: the validated request and two small helpers.

`Request` is built once by ``generate.py`` (all validation happens there); the loops read it
and call the backend module's functions directly.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

from agnostic_sampling._params import SamplingParams

__all__ = ["Request", "token_logprobs", "wrong_shape"]


class Request(NamedTuple):
    """One validated decode request, with its arrays already on the chosen backend."""

    backend: str  # "numpy" or "jax"
    key: Any  # the backend's random state (see agnostic_sampling._keys)
    prompt: Any  # (B, P) integer ids
    lengths: Any  # (B,) ints
    max_new_tokens: int
    eos_id: int | None
    pad_id: int
    return_logprobs: bool
    params: SamplingParams


def wrong_shape(what: str, got: tuple[int, ...], expected: str, fed: str) -> ValueError:
    """The error for a model or step whose logits have the wrong shape."""
    return ValueError(f"{what} returned logits of shape {tuple(got)}; "
                      f"expected {expected} for ids of shape {fed}")


def token_logprobs(processed: Any, tokens: Any, xp: Any) -> Any:
    """``log softmax(processed)[token]`` per row, without underflow.

    Args:
        processed: ``(B, V)`` logits from a backend's ``process_logits`` (``-inf`` outside the
            kept set).
        tokens: ``(B,)`` the drawn ids (clipped into the vocabulary, so ``-1`` is harmless).
        xp: ``numpy`` or ``jax.numpy``.

    Returns:
        ``(B,)`` log-probabilities.
    """
    top = processed.max(axis=-1)  # 0 for every row: process_logits shifts by the row maximum
    log_norm = top + xp.log(xp.exp(processed - top[:, None]).sum(axis=-1))
    index = xp.clip(tokens, 0, processed.shape[-1] - 1)[:, None]
    chosen = xp.take_along_axis(processed, index, axis=-1)[:, 0]
    return chosen - log_norm
