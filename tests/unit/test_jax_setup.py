"""Process-wide JAX settings: the persistent compilation cache and accelerator memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ftcot_jax.jax_setup import DEFAULT_CACHE, compilation_cache_dir, memory_env


def test_the_cache_folder_comes_from_the_environment(tmp_path):
    assert compilation_cache_dir({}) == DEFAULT_CACHE
    assert compilation_cache_dir({"FTCOT_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    for off in ("off", "0", "none", "false", "OFF"):
        assert compilation_cache_dir({"FTCOT_COMPILATION_CACHE": off}) is None


def test_a_second_process_reuses_the_compiled_program(tmp_path):
    """Two processes compile the same function with the cache on: the first misses, the second hits (JAX's
    own compilation-cache events, through the public jax.monitoring listener)."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "events = []\n"
        "jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
        "import ftcot_jax.jax_setup as s; s.MIN_COMPILE_SECONDS = 0.0  # cache even this quick program\n"
        "print(s.enable_compilation_cache())\n"
        "jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()\n"
        "print(sum(e.endswith('cache_hits') for e in events), sum(e.endswith('cache_misses') for e in events))\n"
    )
    env = {"FTCOT_COMPILATION_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)]
    runs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120))
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    (where, first), (_, second) = (r.stdout.split("\n")[:2] for r in runs)
    assert where == str(tmp_path / "cache") and any((tmp_path / "cache").iterdir())
    hits, misses = map(int, first.split())
    assert hits == 0 and misses > 0
    hits, misses = map(int, second.split())
    assert hits > 0 and misses == 0


def test_memory_env():
    assert memory_env(preallocate=False) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert memory_env(fraction=0.45) == {
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45",
    }
    with pytest.raises(ValueError, match=r"memory fraction must be in \(0, 1\], got 1.5"):
        memory_env(fraction=1.5)
