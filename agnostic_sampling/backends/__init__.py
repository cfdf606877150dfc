"""One module per backend, each defining the same functions, and the contract they share.

``asarray``, ``as_key``, ``greedy``, ``sample``, ``process_logits``, ``probs`` and ``logprobs``; the public
functions in ``agnostic_sampling._api`` validate, pick a module by name and delegate to it. Each
backend function returns its result with a per-row status code (below); the public layer turns
concrete bad rows into errors, in one place.
"""

OPERATIONS = ("asarray", "as_key", "greedy", "sample", "process_logits", "probs", "logprobs")

# Per-row status codes returned by every backend function.
ROW_OK, ROW_NAN, ROW_POSINF, ROW_NO_FINITE = 0, 1, 2, 3
