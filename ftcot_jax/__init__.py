"""ftcot-jax: Fine-tune-CoT ("Large Language Models Are Reasoning Teachers") in JAX/Flax."""

__version__ = "0.1.0"
