import sys

from ftcot_jax.cli import main

sys.exit(main())
