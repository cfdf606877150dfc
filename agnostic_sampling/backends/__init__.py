"""One module per backend, each defining the same functions.

``asarray``, ``as_key``, ``greedy``, ``sample``, ``process_logits`` and ``probs``; the public
functions in ``agnostic_sampling._api`` validate, pick a module by name and delegate to it.
"""

OPERATIONS = ("asarray", "as_key", "greedy", "sample", "process_logits", "probs")
