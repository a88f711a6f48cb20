"""Shared test helpers: tiny model configs, tokenizers, synthetic data, torch parity, subprocess runners, fakes."""
