"""The peers' orders of the steps we share, one word away: ``smp.presets.hf(temperature=0.8, ...)``.

Each preset takes the keywords of its steps (``None`` leaves a step out) and returns a `Chain`
with them in that engine's order (README "Chains and presets"):

- `hf` (Hugging Face transformers): temperature, top-k, top-p, min-p, typical-p, epsilon, eta;
- `vllm`: temperature, min-p, top-k, top-p;
- `llama_cpp` (its default sampler chain): top-n-sigma, top-k, typical-p, top-p, min-p, XTC,
  then temperature last.
"""

from __future__ import annotations

from typing import Any

from agnostic_sampling import _chain

__all__ = ["hf", "llama_cpp", "vllm"]


def _build(order: tuple[str, ...], values: dict[str, Any], min_keep: Any) -> _chain.Chain:
    makers = {"temperature": _chain.temperature, "top_k": _chain.top_k, "top_p": _chain.top_p,
              "min_p": _chain.min_p, "typical_p": _chain.typical_p, "epsilon": _chain.epsilon,
              "eta": _chain.eta, "top_n_sigma": _chain.top_n_sigma}
    steps = []
    for kind in order:
        if kind == "xtc":
            if values["xtc_threshold"] is not None or values["xtc_probability"] is not None:
                steps.append(_chain.xtc(values["xtc_threshold"], values["xtc_probability"]))
        elif values[kind] is not None:
            steps.append(makers[kind](values[kind]))
    return _chain.chain(*steps, min_keep=min_keep)


def hf(*, temperature: Any = None, top_k: Any = None, top_p: Any = None, min_p: Any = None,
       typical_p: Any = None, epsilon: Any = None, eta: Any = None, min_keep: Any = 1) -> _chain.Chain:
    """Hugging Face's order: temperature first, then top-k, top-p, min-p, typical-p, epsilon, eta.

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.presets.hf(temperature=0.7, top_p=0.9, top_k=50).kinds
        ('temperature', 'top_k', 'top_p')
    """
    return _build(("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta"),
                  dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                       epsilon=epsilon, eta=eta), min_keep)


def vllm(*, temperature: Any = None, top_k: Any = None, top_p: Any = None, min_p: Any = None,
         min_keep: Any = 1) -> _chain.Chain:
    """The order of vLLM: temperature, then min-p, then top-k and top-p.

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.presets.vllm(temperature=0.7, top_p=0.9, min_p=0.05).kinds
        ('temperature', 'min_p', 'top_p')
    """
    return _build(("temperature", "min_p", "top_k", "top_p"),
                  dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p), min_keep)


def llama_cpp(*, temperature: Any = None, top_k: Any = None, top_p: Any = None, min_p: Any = None,
              typical_p: Any = None, top_n_sigma: Any = None, xtc_threshold: Any = None,
              xtc_probability: Any = None, min_keep: Any = 1) -> _chain.Chain:
    """llama.cpp's default chain: top-n-sigma, top-k, typical-p, top-p, min-p, XTC, temperature last.

    Example:
        >>> import agnostic_sampling as smp
        >>> smp.presets.llama_cpp(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05).kinds
        ('top_k', 'top_p', 'min_p', 'temperature')
    """
    return _build(("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature"),
                  dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                       top_n_sigma=top_n_sigma, xtc_threshold=xtc_threshold,
                       xtc_probability=xtc_probability), min_keep)
