"""One backend fixture parametrises the suite: NumPy, JAX eagerly, and JAX under ``jax.jit``."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.testing import seed_for

HAVE_JAX = importlib.util.find_spec("jax") is not None


class Backend:
    """How a test talks to one backend: arrays in, NumPy results out."""

    def __init__(self, name: str, jitted: bool = False):
        self.name = name
        self.jitted = jitted
        self.id = name + ("-jit" if jitted else "")

    def array(self, x: Any) -> Any:
        if self.name == "numpy":
            return np.asarray(x)
        import jax.numpy as jnp

        return jnp.asarray(x)

    def key(self, seed: int) -> Any:
        if self.name == "numpy":
            return np.random.default_rng(seed)
        import jax

        return jax.random.key(seed)

    def _call(self, fn: Any, *args: Any, **kw: Any) -> np.ndarray:
        args = tuple(self.array(a) if isinstance(a, np.ndarray) else a for a in args)
        if not self.jitted:
            return np.asarray(fn(*args, **kw))
        # The parameters go in as traced arguments (the case that must not recompile), and
        # one jitted function per operation is reused, so a test pays each compile once.
        params = kw["params"] if "params" in kw else smp.SamplingParams(**kw)
        return np.asarray(_jitted(fn)(*args, params=params))

    def sample(self, key: Any, logits: Any, **kw: Any) -> np.ndarray:
        return self._call(smp.sample, key, logits, **kw)

    def probs(self, logits: Any, **kw: Any) -> np.ndarray:
        return self._call(smp.probs, logits, **kw)

    def process_logits(self, logits: Any, **kw: Any) -> np.ndarray:
        return self._call(smp.process_logits, logits, **kw)

    def greedy(self, logits: Any) -> np.ndarray:
        if not self.jitted:
            return np.asarray(smp.greedy(self.array(logits)))
        return np.asarray(_jitted(smp.greedy)(self.array(logits)))


_JITTED: dict[Any, Any] = {}


def _jitted(fn: Any) -> Any:
    """``jax.jit(fn)``, built once per function (JAX caches compiles per jitted object)."""
    if fn not in _JITTED:
        import jax

        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


NEEDS_JAX = pytest.mark.skipif(not HAVE_JAX, reason="JAX not installed (the NumPy-only environment)")
BACKENDS = [
    pytest.param(("numpy", False), id="numpy"),
    pytest.param(("jax", False), id="jax", marks=NEEDS_JAX),
    pytest.param(("jax", True), id="jax-jit", marks=NEEDS_JAX),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name, jitted = request.param
    return Backend(name, jitted)


@pytest.fixture
def eager_backend(backend: Backend) -> Backend:
    """The backend fixture without the jitted variant (for eager-only behaviour: errors)."""
    if backend.jitted:
        pytest.skip("eager behaviour only")
    return backend


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed derived from the test's own id (never from Python's salted ``hash``), shifted by
    ``$AGNOSTIC_SAMPLING_SEED_OFFSET`` for calibration runs: `agnostic_sampling.testing.seed_for`."""
    return seed_for(request.node.nodeid)


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches() -> Any:
    """Drop JAX's compiled programs after each test module.

    The suite compiles thousands of programs in one process; one full run crashed inside XLA's
    compiler late in the suite, in a file that passes alone. Fresh caches per module keep every
    module's process state as when it runs alone.
    """
    yield
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
        _JITTED.clear()
