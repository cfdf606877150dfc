"""Benchmark sample() against the peers; the same as ``python -m agnostic_sampling bench``.

    python benchmarks/bench.py            # quick: batch 64 x vocabulary 128256 + growth points
    python benchmarks/bench.py --full     # batch 1, 8, 64, 256 x vocabulary 32000 .. 1048576
"""

import sys

from agnostic_sampling._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
