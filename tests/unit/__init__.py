"""In-process tests, one file per module of ftcot_jax; `pytest -m "not slow"` runs them."""
