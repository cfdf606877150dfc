"""Processors built with their parameters, and `chain`, which runs them in the order given.

``smp.chain(smp.top_k(50), smp.temperature(0.8), smp.top_p(0.9))`` is a `Chain`: pass it as
``params=`` to `sample`, `probs`, `process_logits`, `logprobs`, `verify_draft`, `generate` or
`generate_with_state`. Each processor's values are scalars or per-row arrays, traced under ``jit``
(a `Chain` is a JAX pytree whose structure, the order of its steps, is static: one compile per
order). A chain whose steps follow the default order (README "Semantics") is the keyword API
exactly and runs its fast path; any other order runs each step on whole rows, or on candidate
blocks when it starts with top-k (`backends._chain.run_candidates`). The logit shaping keywords
of the call (bias, masks, penalties) run before the first step, as with the keywords.
`agnostic_sampling.presets` builds the peers' orders.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._params import SHAPING_FIELDS
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import _canonical
from agnostic_sampling._params import _check
from agnostic_sampling._params import _check_dtype
from agnostic_sampling._params import _is_default
from agnostic_sampling._params import validate_params

__all__ = ["DEFAULT_ORDER", "Chain", "Step", "chain", "epsilon", "eta", "min_p", "temperature", "top_k",
           "top_n_sigma", "top_p", "typical_p", "validate_chain", "with_keywords", "xtc"]

# Each kind of step and the SamplingParams fields it holds, in the default order.
_FIELDS = {"temperature": ("temperature",), "top_k": ("top_k",), "top_p": ("top_p",), "min_p": ("min_p",),
           "typical_p": ("typical_p",), "epsilon": ("epsilon",), "eta": ("eta",),
           "top_n_sigma": ("top_n_sigma",), "xtc": ("xtc_threshold", "xtc_probability")}
DEFAULT_ORDER = tuple(_FIELDS)
_registered = False


@dataclasses.dataclass(frozen=True)
class Step:
    """One processor: its kind and its values (one per field of the kind, see `fields`)."""

    kind: str
    values: tuple[Any, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The `SamplingParams` names of ``values``."""
        return _FIELDS[self.kind]


def _step(kind: str, *values: Any) -> Step:
    fields = _FIELDS[kind]
    return Step(kind, tuple(_canonical(name, value) for name, value in zip(fields, values, strict=True)))


def temperature(value: Any) -> Step:
    """Divide the logits by ``value`` (``0``: the row becomes greedy on its current maximum).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.temperature(0.8).kind
        'temperature'
    """
    return _step("temperature", value)


def top_k(value: Any) -> Step:
    """Keep the ``value`` largest logits and every tie of the last (``0`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.top_k(50).fields
        ('top_k',)
    """
    return _step("top_k", value)


def top_p(value: Any) -> Step:
    """Keep the smallest set whose mass reaches ``value``, with ties (``1`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> float(smp.top_p(0.9).values[0])
        0.9
    """
    return _step("top_p", value)


def min_p(value: Any) -> Step:
    """Keep the tokens at least ``value`` times as probable as the most probable (``0`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.min_p(0.05).kind
        'min_p'
    """
    return _step("min_p", value)


def typical_p(value: Any) -> Step:
    """Keep the most typical tokens up to mass ``value`` (``1`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.typical_p(0.9).kind
        'typical_p'
    """
    return _step("typical_p", value)


def epsilon(value: Any) -> Step:
    """Remove the tokens of probability below ``value`` (``0`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.epsilon(3e-4).kind
        'epsilon'
    """
    return _step("epsilon", value)


def eta(value: Any) -> Step:
    """Remove the tokens of probability below ``min(value, sqrt(value) * exp(-H))`` (``0`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.eta(1e-3).kind
        'eta'
    """
    return _step("eta", value)


def top_n_sigma(value: Any) -> Step:
    """Keep the logits within ``value`` standard deviations of the maximum (``inf`` disables).

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.top_n_sigma(1.0).kind
        'top_n_sigma'
    """
    return _step("top_n_sigma", value)


def xtc(threshold: Any, probability: Any) -> Step:
    """With ``probability``, exclude the tokens at least as probable as ``threshold`` but the least.

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.xtc(0.1, 0.5).fields
        ('xtc_threshold', 'xtc_probability')
    """
    return _step("xtc", threshold, probability)


@dataclasses.dataclass(frozen=True)
class Chain:
    """Processors run in order; ``min_keep`` holds for every truncation step, as for the keywords.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.log(np.array([0.5, 0.3, 0.2]))
        >>> llama_like = smp.chain(smp.top_p(0.75), smp.temperature(3.0))  # top-p untempered
        >>> smp.probs(logits, params=llama_like).round(3).tolist()
        [0.542, 0.458, 0.0]
        >>> smp.probs(logits, temperature=3.0, top_p=0.75).round(3).tolist()  # the default order
        [0.388, 0.327, 0.286]
    """

    steps: tuple[Step, ...]
    min_keep: Any = 1
    shaping: SamplingParams | None = None  # the call's shaping keywords, applied before the steps

    def __post_init__(self) -> None:
        if not _registered and "jax" in sys.modules:
            register_pytree()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of the steps, in order (static under ``jit``)."""
        return tuple(step.kind for step in self.steps)

    def as_params(self) -> SamplingParams | None:
        """The same parameters as keywords when the steps follow the default order, else None."""
        positions = [DEFAULT_ORDER.index(kind) for kind in self.kinds]
        if positions != sorted(set(positions)):
            return None
        fields = {name: value for step in self.steps for name, value in zip(step.fields, step.values,
                                                                             strict=True)}
        if self.shaping is not None:
            fields.update({name: getattr(self.shaping, name) for name in SHAPING_FIELDS})
        return SamplingParams(min_keep=self.min_keep, **fields)


def chain(*steps: Step, min_keep: Any = 1) -> Chain:
    """Compose processors, run in the order given.

    Args:
        *steps: processors from `temperature`, `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon`,
            `eta`, `top_n_sigma`, `xtc`; a kind may appear more than once.
        min_keep: no truncation step leaves fewer than this many tokens (``>= 1``).

    Returns:
        A `Chain`, for ``params=`` of `sample`, `probs`, `process_logits`, `logprobs`,
        `verify_draft` and the decode loops.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> vllm_like = smp.chain(smp.temperature(0.7), smp.min_p(0.1), smp.top_k(2))
        >>> smp.sample(0, np.log(np.array([[0.5, 0.3, 0.2]])), params=vllm_like).shape
        (1,)
    """
    for step in steps:
        if not isinstance(step, Step):
            raise TypeError(f"chain takes processors such as smp.top_k(50), got {type(step).__name__}")
    return Chain(tuple(steps), _canonical("min_keep", min_keep))


def validate_chain(value: Chain, batch_shape: tuple[int, ...]) -> None:
    """Check every concrete value of a chain as the keyword of the same name is checked."""
    for step in value.steps:
        for name, field in zip(step.fields, step.values, strict=True):
            if field is None:
                raise ValueError(f"{step.kind} needs a value for {name}, got None")
            if is_tracer(field):
                _check_dtype(name, field.dtype)
            else:
                _check(name, field, batch_shape)
    if is_tracer(value.min_keep):
        _check_dtype("min_keep", value.min_keep.dtype)
    else:
        _check("min_keep", value.min_keep, batch_shape)


def with_keywords(chain: Chain, batch_shape: tuple[int, ...], vocab: int | None, keywords: dict[str, Any], *,
                  history_supplied: bool = False) -> Chain:
    """``chain``, checked, with the call's logit shaping keywords (the sampling ones are its steps)."""
    given = [name for name, value in keywords.items()
             if name not in SHAPING_FIELDS and not _is_default(name, value)]
    if given:
        raise TypeError(f"pass the sampling steps either in the chain or as keywords, not both: got a chain "
                        f"and {', '.join(given)}")
    validate_chain(chain, batch_shape)
    shaping = {name: value for name, value in keywords.items()
               if name in SHAPING_FIELDS and value is not None}
    if not shaping:
        return chain
    shaping_params = SamplingParams(**shaping)
    validate_params(shaping_params, batch_shape, vocab, history_supplied=history_supplied)
    return dataclasses.replace(chain, shaping=shaping_params)


def register_pytree() -> None:
    """Register `Chain` as a JAX pytree: the values are leaves, the kinds static."""
    global _registered
    if _registered:
        return
    import jax.tree_util

    def flatten(value: Chain) -> tuple[list[Any], tuple[str, ...]]:
        return [*(v for step in value.steps for v in step.values), value.min_keep, value.shaping], value.kinds

    def unflatten(kinds: tuple[str, ...], leaves: Any) -> Chain:
        leaves = list(leaves)
        steps = []
        for kind in kinds:
            count = len(_FIELDS[kind])
            steps.append(Step(kind, tuple(leaves[:count])))
            del leaves[:count]
        out = object.__new__(Chain)
        object.__setattr__(out, "steps", tuple(steps))
        object.__setattr__(out, "min_keep", leaves[0])
        object.__setattr__(out, "shaping", leaves[1])
        return out

    jax.tree_util.register_pytree_node(Chain, flatten, unflatten)
    _registered = True
