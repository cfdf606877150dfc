"""agnostic-sampling: next-token sampling for NumPy and JAX, exact and statistically verified.

Example:
    >>> import numpy as np, agnostic_sampling as smp
    >>> logits = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], np.float32)
    >>> int(smp.greedy(logits))
    3
"""

from agnostic_sampling import stats
from agnostic_sampling._api import LogprobsResult
from agnostic_sampling._api import greedy
from agnostic_sampling._api import logprobs
from agnostic_sampling._api import probs
from agnostic_sampling._api import process_logits
from agnostic_sampling._api import sample
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import Seed
from agnostic_sampling._speculative import DraftVerification
from agnostic_sampling._speculative import verify_draft
from agnostic_sampling.generate import GenerateResult
from agnostic_sampling.generate import generate
from agnostic_sampling.generate import generate_with_state

__version__ = "0.1.0"

__all__ = [
    "DraftVerification",
    "GenerateResult",
    "LogprobsResult",
    "SamplingParams",
    "Seed",
    "generate",
    "generate_with_state",
    "greedy",
    "logprobs",
    "probs",
    "process_logits",
    "sample",
    "stats",
    "verify_draft",
]
