"""Every example in the public modules' docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["agnostic_sampling", "agnostic_sampling._api", "agnostic_sampling._chain",
           "agnostic_sampling.presets", "agnostic_sampling._mirostat", "agnostic_sampling._speculative",
           "agnostic_sampling.generate", "agnostic_sampling._seed", "agnostic_sampling._params",
           "agnostic_sampling.sharding", "agnostic_sampling.backends._numpy_counts"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    results = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0
