"""`python -m ftcot_jax`: the `ftcot` command."""

import sys

from ftcot_jax.cli import main

sys.exit(main())
