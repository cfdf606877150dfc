"""The backends' contract: every backend module defines the same operations with the same signatures.

The public functions in ``agnostic_sampling._api`` call a backend module's operations by name and
position, so a backend that names a parameter differently or lacks an operation breaks only when
that backend runs; this test catches it in every environment that can import the backends.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import types
from pathlib import Path
from typing import Any

import pytest

from agnostic_sampling import backends
from agnostic_sampling._dispatch import BACKENDS
from agnostic_sampling.backends import OPERATIONS

HAVE_JAX = importlib.util.find_spec("jax") is not None
NO_JAX = "JAX not installed (the NumPy-only environment)"


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(f"agnostic_sampling.backends.{name}")


def _shape(fn: Any) -> list[tuple[str, Any, bool]]:
    """What callers rely on: each parameter's name, kind, and whether it has a default."""
    return [(p.name, p.kind, p.default is not p.empty) for p in inspect.signature(fn).parameters.values()]


def _public_functions(module: types.ModuleType) -> set[str]:
    return {name for name, value in vars(module).items()
            if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")}


def _mismatches(modules: dict[str, types.ModuleType]) -> list[str]:
    """Every way the modules break the contract: a missing operation, or a signature that differs
    from the first module's."""
    found = []
    for operation in OPERATIONS:
        shapes = {}
        for name, module in modules.items():
            fn = getattr(module, operation, None)
            if not callable(fn):
                found.append(f"backend {name!r} lacks {operation!r}")
            else:
                shapes[name] = _shape(fn)
        if len({repr(shape) for shape in shapes.values()}) > 1:
            found.append(f"{operation!r} differs: {shapes}")
    return found


EACH_BACKEND = [pytest.param(name, marks=pytest.mark.skipif(name == "jax" and not HAVE_JAX, reason=NO_JAX))
                for name in BACKENDS]


@pytest.mark.parametrize("name", EACH_BACKEND)
def test_each_backend_defines_exactly_the_operations(name: str) -> None:
    module = _module(name)
    assert not _mismatches({name: module})
    # Nothing public beyond the contract: a new operation goes into OPERATIONS and every backend.
    assert _public_functions(module) == set(OPERATIONS)


@pytest.mark.skipif(not HAVE_JAX, reason=NO_JAX)
def test_backends_share_every_signature() -> None:
    modules = {name: _module(name) for name in BACKENDS}
    assert _mismatches(modules) == []


def test_a_renamed_parameter_or_a_missing_operation_is_caught() -> None:
    numpy_backend = _module("numpy")
    renamed = types.ModuleType("renamed")
    vars(renamed).update({operation: getattr(numpy_backend, operation) for operation in OPERATIONS})

    def sample(rng: Any, logits: Any, params: Any) -> Any:
        raise AssertionError("never called")

    renamed.sample = sample
    del renamed.probs
    found = _mismatches({"numpy": numpy_backend, "renamed": renamed})
    assert any("'sample' differs" in message for message in found), found
    assert "backend 'renamed' lacks 'probs'" in found


def _backend_imports(path: Path) -> set[str]:
    """The modules of ``agnostic_sampling.backends`` that a source file imports (read, not run)."""
    package = "agnostic_sampling.backends"
    modules = {p.stem for p in path.parent.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == package:  # from the package: a module?
            found |= {alias.name for alias in node.names} & modules
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            found.add(node.module.removeprefix(package + "."))
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix(package + ".") for alias in node.names
                      if alias.name.startswith(package + ".")}
    return found


def test_the_jax_backends_parts_import_downwards_only() -> None:
    """``jax.py`` uses its private parts; they never import it, and only ``_jax_common`` is shared."""
    folder = Path(backends.__file__).parent
    below = {"_jax_common": set(), "_jax_search": {"_jax_common"}, "_jax_draw": {"_jax_common"}}
    for name, allowed in below.items():
        assert _backend_imports(folder / f"{name}.py") <= allowed, name
    assert set(below) <= _backend_imports(folder / "jax.py")


def test_no_private_part_imports_a_backends_face() -> None:
    """The faces (``numpy.py``, ``jax.py``) sit on top: no private module imports either of them,
    and no NumPy part imports a JAX part (NumPy-only installs must never reach JAX)."""
    folder = Path(backends.__file__).parent
    parts = sorted(p for p in folder.glob("_*.py") if p.stem != "__init__")
    numpy_parts = {"_numpy_rows", "_numpy_pipeline", "_numpy_draw", "_numpy_logprobs", "_numpy_chain"}
    assert numpy_parts <= {p.stem for p in parts}
    for path in parts:
        imported = _backend_imports(path)
        assert not imported & {"numpy", "jax"}, path.stem
        if not path.stem.startswith("_jax"):
            assert not any(name.startswith("_jax") for name in imported), path.stem
    numpy_face = _backend_imports(folder / "numpy.py")
    assert numpy_parts <= numpy_face
    assert not any(name.startswith("_jax") for name in numpy_face)
