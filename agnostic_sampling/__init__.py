"""agnostic-sampling: next-token sampling for NumPy and JAX, exact and statistically verified.

Example:
    >>> import numpy as np, agnostic_sampling as smp
    >>> logits = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], np.float32)
    >>> int(smp.greedy(logits))
    3
"""

from agnostic_sampling import presets
from agnostic_sampling import stats
from agnostic_sampling._api import LogprobsResult
from agnostic_sampling._api import greedy
from agnostic_sampling._api import logprobs
from agnostic_sampling._api import probs
from agnostic_sampling._api import process_logits
from agnostic_sampling._api import sample
from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import Step
from agnostic_sampling._chain import chain
from agnostic_sampling._chain import epsilon
from agnostic_sampling._chain import eta
from agnostic_sampling._chain import min_p
from agnostic_sampling._chain import temperature
from agnostic_sampling._chain import top_k
from agnostic_sampling._chain import top_n_sigma
from agnostic_sampling._chain import top_p
from agnostic_sampling._chain import typical_p
from agnostic_sampling._chain import xtc
from agnostic_sampling._dry import Dry
from agnostic_sampling._mirostat import MirostatResult
from agnostic_sampling._mirostat import mirostat
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._seed import Seed
from agnostic_sampling._speculative import DraftVerification
from agnostic_sampling._speculative import verify_draft
from agnostic_sampling.generate import GenerateResult
from agnostic_sampling.generate import generate
from agnostic_sampling.generate import generate_with_state

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "DraftVerification",
    "Dry",
    "GenerateResult",
    "LogprobsResult",
    "MirostatResult",
    "SamplingParams",
    "Seed",
    "Step",
    "chain",
    "epsilon",
    "eta",
    "generate",
    "generate_with_state",
    "greedy",
    "logprobs",
    "min_p",
    "mirostat",
    "presets",
    "probs",
    "process_logits",
    "sample",
    "stats",
    "temperature",
    "top_k",
    "top_n_sigma",
    "top_p",
    "typical_p",
    "verify_draft",
    "xtc",
]
