"""The one key converter: what the user passed as ``key`` becomes the chosen backend's random state.

Used by the public functions (``key`` next to ``logits``) and by the decode loops (``key`` next
to ``prompt``), so both accept the same keys and refuse the other backend's keys with the same
message.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from agnostic_sampling._dispatch import is_jax_array

__all__ = ["as_backend_key"]


def as_backend_key(key: Any, module: ModuleType, given: Any, argument: str = "logits") -> Any:
    """Turn ``key`` into ``module``'s random state, refusing the other backend's keys.

    Args:
        key: what the user passed: a ``numpy.random.Generator``, a ``SeedSequence``, an int, a
            JAX key or a legacy ``PRNGKey``.
        module: the chosen backend module (``agnostic_sampling.backends.numpy`` or ``.jax``).
        given: the array whose type chose the backend, named in the message.
        argument: that array's parameter name (``"logits"`` or ``"prompt"``).

    Returns:
        A ``numpy.random.Generator`` on NumPy, a typed JAX key array on JAX.

    Raises:
        TypeError: a key of the other backend (the message says why this backend was chosen),
            or a value the backend does not take as a key.
    """
    name = module.__name__.rsplit(".", 1)[-1]
    kind = f"{type(given).__module__}.{type(given).__name__}"
    why = f"the {name} backend was chosen because {argument} is a {kind}"
    if name == "numpy" and is_jax_array(key):
        other = "JAX logits" if argument == "logits" else f"a JAX {argument}"
        raise TypeError(f"key is a JAX key but {why}; pass a numpy.random.Generator, an int, a "
                        f"SeedSequence or a Seed, or {other} (or backend='jax')")
    if name == "jax" and isinstance(key, (np.random.Generator, np.random.SeedSequence)):
        raise TypeError(f"key is a {type(key).__name__} but {why}; "
                        "pass a jax.random.key, a PRNGKey, an int or a Seed")
    return module.as_key(key)
