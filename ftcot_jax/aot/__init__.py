"""Ahead-of-time compilation for Cloud TPU slices on any host (libtpu's compiler, no TPU): what `ftcot train`
would run, its per-chip memory, collectives and whether it fits (`ftcot compile`, docs/tpu.md).

- `aot.topology`: slice names -> the compiler's topologies and their compile-only devices; chip facts.
- `aot.shapes`: the architectures of known students (no download needed to compile them).
- `aot.compile`: `compile_config(cfg, slice)` -> `CompileReport` (train step + evaluation decode).
- `aot.hlo`: memory, collectives and out-of-memory facts of a compiled program.
"""
