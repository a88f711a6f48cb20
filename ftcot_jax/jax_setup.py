"""Process-wide JAX settings that the commands apply before any computation: the persistent compilation cache,
and how much accelerator memory a process takes (so a PyTorch process beside it still fits).

- Compilation cache: compiled programs are kept in `$FTCOT_COMPILATION_CACHE` (default
  `~/.cache/ftcot-jax/xla`; `off` disables it), so a rerun of the same shapes (a resumed training, the next
  `ftcot run` stage, a served model) skips XLA compilation.
- Memory: JAX preallocates 75% of an accelerator's memory by default. A process that runs beside another
  framework's (`ftcot compare`'s driver while its PyTorch worker runs) allocates on demand instead; a JAX worker
  takes a stated fraction.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "FTCOT_COMPILATION_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "ftcot-jax" / "xla"
MIN_COMPILE_SECONDS = 1.0  # programs that compile faster than this are not worth a file


def compilation_cache_dir(environ=os.environ) -> Path | None:
    """Where compiled programs are kept (None: the cache is off)."""
    value = environ.get(CACHE_ENV, "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else DEFAULT_CACHE


def enable_compilation_cache(environ=os.environ) -> Path | None:
    """Turns the persistent compilation cache on for this process; returns its folder (None when off)."""
    path = compilation_cache_dir(environ)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


def memory_env(*, fraction: float | None = None, preallocate: bool = True) -> dict[str, str]:
    """Environment variables for a JAX process's accelerator memory (they act before JAX starts its backends):
    `fraction` of the memory preallocated, or with `preallocate=False` allocation on demand."""
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"memory fraction must be in (0, 1], got {fraction}")
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true" if preallocate else "false"}
    if fraction is not None:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:g}"
    return env
