"""One module per backend, each defining the same functions, and the contract they share.

The backends are ``numpy`` and ``jax``; the JAX backend's private parts sit beside it
(``_jax_search``: thresholds; ``_jax_draw``: draws; ``_jax_common``: what both share). Each
backend defines the operations ``OPERATIONS`` with the same signatures (``tests/test_backends.py``
checks it); the public functions in ``agnostic_sampling._api`` validate, pick a module by name
and delegate to it. Each operation returns its result with a per-row status code (below); the
public layer turns concrete bad rows into errors, in one place.
"""

OPERATIONS = ("asarray", "as_key", "greedy", "sample", "process_logits", "probs", "logprobs", "verify_draft")

# Per-row status codes returned by every backend function.
ROW_OK, ROW_NAN, ROW_POSINF, ROW_NO_FINITE = 0, 1, 2, 3
