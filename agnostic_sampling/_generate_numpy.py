"""The NumPy decode loop: a Python loop over positions, one backend `sample` call at each.

`generate` and `generate_with_state` build the `Request` (``_decode.request``) and hand it here
when the backend is NumPy; the layout, padding and key rules are in ``generate``'s module
docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agnostic_sampling._checks import check_logits
from agnostic_sampling._checks import raise_bad_rows
from agnostic_sampling._decode import Request
from agnostic_sampling._decode import check_top_logprobs
from agnostic_sampling._decode import wrong_shape
from agnostic_sampling._mirostat import next_mu
from agnostic_sampling._mirostat import with_bound
from agnostic_sampling._seed import SeedWords
from agnostic_sampling._seed import advance
from agnostic_sampling.backends import numpy as numpy_backend
from agnostic_sampling.backends._loop_shaping import advance_counts
from agnostic_sampling.backends._loop_shaping import initial_counts
from agnostic_sampling.backends._loop_shaping import shape_step
from agnostic_sampling.backends._numpy_counts import CompactCounts
from agnostic_sampling.backends._shaping import bias_entries
from agnostic_sampling.backends._shaping import mask_bans

__all__ = ["NumpyLoop"]



class NumpyLoop:
    """One decode on NumPy; ``model`` (the plain form) or ``step`` and ``state`` (the cached form)."""

    def __init__(self, request: Request, *, model: Any = None, context_size: int | None = None,
                 step: Any = None, state: Any = None):
        self.request, self.model, self.context_size = request, model, context_size
        self.step, self.state = step, state
        self.vocab: int | None = None
        self.counts: CompactCounts | None = None  # the penalties' counts, once the vocabulary is known
        self.bans: np.ndarray | None = None  # the masks' bans, found once (the loop shapes them)
        self.bias: tuple[np.ndarray, np.ndarray] | None = None  # a mostly zero bias's entries, found once
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
                                    generated, request.min_tokens, request.shaping_params, np, ids, t,
                                    self.bans, self.bias)
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

    def run(self) -> tuple[Any, ...]:  # noqa: C901
        """The fields of a `GenerateResult`, in its order."""
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
                    self.bans = mask_bans(request.shaping_params, batch, logits.shape[-1])
                    self.bias = bias_entries(request.shaping_params, batch, logits.shape[-1])
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
        return ids, generated, logprobs, calls, self.state, top_ids, top_logprobs
