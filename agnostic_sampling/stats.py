"""Statistical verification of samplers.

`reference_probs` is the oracle: the pipeline of the README's "Semantics" section in float64,
one row at a time, sort-based and written for clarity. It shares no code with the fast backends.
`reference_logprobs` is its counterpart for `agnostic_sampling.logprobs`, `reference_mirostat` for
`agnostic_sampling.mirostat` (one step: the distribution and the next state).

The rest checks that draws come from a distribution. `chisquare_gof` is Pearson's test on cells
pooled from the expected probabilities and the sample count only (pooling on the observed counts
would bias it); `required_samples` and `detectable_tv` size it; `assert_samples_match` wraps it
for tests with a suite-wide false-alarm budget. Everything that needs SciPy imports it inside
the function, so importing this module (and the package) never imports SciPy.

Sizing in one line: with ``k`` cells the test detects, with probability ``power`` at level
``alpha``, every deviation whose total-variation distance (between the cell distributions) is at
least ``sqrt(lam / (4 n))``, where ``lam`` is the noncentrality at which the noncentral
chi-square with ``k - 1`` degrees of freedom exceeds the level-``alpha`` critical value with
probability ``power``. The ``4`` is the worst case: by Cauchy-Schwarz, Pearson's divergence
``sum (p'_c - p_c)^2 / p_c`` is at least ``(2 tv)^2``, with equality when the deviation is
proportional to ``p`` on two halves of equal mass.

This module is the public face: the test and its assertion live in ``_chisquare``, the sizing
and the default levels in ``_sizing``, the speculative checker in ``_speculative_check``.
"""

from __future__ import annotations

from agnostic_sampling._chisquare import ChiSquareResult
from agnostic_sampling._chisquare import assert_samples_match
from agnostic_sampling._chisquare import chisquare_gof
from agnostic_sampling._reference import reference_logprobs
from agnostic_sampling._reference import reference_mirostat
from agnostic_sampling._reference import reference_probs
from agnostic_sampling._sizing import DEFAULT_ALPHA
from agnostic_sampling._sizing import DEFAULT_POWER
from agnostic_sampling._sizing import DEFAULT_TV
from agnostic_sampling._sizing import MIN_EXPECTED
from agnostic_sampling._sizing import SEED_OFFSET_ENV
from agnostic_sampling._sizing import SUITE_ALPHA
from agnostic_sampling._sizing import detectable_tv
from agnostic_sampling._sizing import required_samples
from agnostic_sampling._speculative_check import SpeculativeResult
from agnostic_sampling._speculative_check import assert_speculative_matches

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_POWER",
    "DEFAULT_TV",
    "MIN_EXPECTED",
    "SEED_OFFSET_ENV",
    "SUITE_ALPHA",
    "ChiSquareResult",
    "SpeculativeResult",
    "assert_samples_match",
    "assert_speculative_matches",
    "chisquare_gof",
    "detectable_tv",
    "reference_logprobs",
    "reference_mirostat",
    "reference_probs",
    "required_samples",
]
