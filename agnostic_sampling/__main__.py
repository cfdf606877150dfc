"""``python -m agnostic_sampling``: the command line (see `agnostic_sampling.cli`)."""

from agnostic_sampling.cli import main

raise SystemExit(main())
