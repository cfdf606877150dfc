"""Backend lookup from the input's type.

JAX is only ever looked up in ``sys.modules``: whoever holds a JAX array has imported JAX
already, so this module never imports it on the caller's behalf. Answers are cached per type.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

BACKENDS = ("numpy", "jax")


@functools.cache
def _is_jax_type(cls: type) -> bool:
    jax = sys.modules.get("jax")
    if jax is None:
        return False
    return issubclass(cls, jax.Array) or issubclass(cls, jax.core.Tracer)


def is_jax_array(value: Any) -> bool:
    """True for a JAX array or tracer (and False without importing JAX)."""
    return _is_jax_type(type(value))


def is_tracer(value: Any) -> bool:
    """True for a JAX tracer: a value whose contents are unknown until run time."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def backend_name(logits: Any, backend: str | None = None) -> str:
    """The backend that serves ``logits``: ``backend`` if given, else by the array's type."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        return backend
    return "jax" if is_jax_array(logits) else "numpy"


@functools.cache
def get_backend(name: str) -> ModuleType:
    """Import (once) and return the backend module called ``name``."""
    if name == "jax" and importlib.util.find_spec("jax") is None:
        raise ImportError("backend 'jax' needs JAX: pip install 'agnostic-sampling[jax]'")
    return importlib.import_module(f"agnostic_sampling.backends.{name}")
