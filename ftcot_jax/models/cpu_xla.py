"""Switches by platform, in one place: each picks how a computation is compiled or looped on the platform it runs
on (XLA:CPU or an accelerator), never its values.

- `grad_barrier`: stops XLA:CPU from duplicating residual-gradient sums across blocks in the backward pass.
- `loop_compiler_options`: Eigen dots instead of YNNPACK for the decode loop at 2-16 rows.
- `decode_chunk`: the decode loop as one data-dependent while loop on CPU, fixed-length chunks elsewhere.

docs/train.md and docs/compare.md have the measurements behind each.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


@jax.custom_vjp
def grad_barrier(x):
    """Identity on the residual stream at each block boundary whose cotangent is materialised in the backward
    pass. Without it XLA:CPU fuses the residual-gradient sums of all the blocks above into every block's
    backward fusion and recomputes them there: O(layers^2) work and minutes of compile time (docs/train.md has
    the measurements). Only where the computation is lowered for CPU: GPU/TPU fusion does not duplicate like
    this, and a conditional there costs a device-host sync."""
    return x


def _through_a_conditional(g):
    # XLA:CPU expands optimization_barrier before fusion, so that cannot stop the duplication; a conditional
    # can: its operand must exist as a buffer. The predicate is a runtime value; both branches are identities.
    pred = jnp.isfinite(g.reshape(-1)[0])
    return jax.lax.cond(pred, lambda t: t, lambda t: t + 0, g)


def _materialise(g):
    # Chosen when the computation is lowered, by the platform it is lowered for (not the default backend).
    return jax.lax.platform_dependent(g, cpu=_through_a_conditional, default=lambda t: t)


grad_barrier.defvjp(lambda x: (x, None), lambda _, g: (_materialise(g),))


# XLA:CPU's default (YNNPACK) dots are slow at a few rows; with Eigen dots the decode loop at 2-16 rows is faster,
# at 1 and 32+ rows not (docs/compare.md, "Greedy decoding: what limits it", has the measurements). The option is
# experimental and may be renamed: a jaxlib that rejects an option set compiles with XLA's defaults instead.
CPU_FEW_ROWS = (2, 16)
FEW_ROWS_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_rejected: set[frozenset] = set()  # option sets this jaxlib refused to compile


def platform_of(tree) -> str:
    """The platform ("cpu", "gpu", "tpu") of the devices the arrays in `tree` live on (e.g. a model's params), or
    that its sharded ShapeDtypeStructs are placed on; JAX's default backend when `tree` holds neither."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            return next(iter(leaf.devices())).platform
        sharding = getattr(leaf, "sharding", None)  # a ShapeDtypeStruct lowered for other devices (a TPU slice)
        if isinstance(leaf, jax.ShapeDtypeStruct) and sharding is not None:
            return next(iter(sharding.device_set)).platform
    return jax.default_backend()


def loop_compiler_options(batch: int, platform: str) -> dict | None:
    """The XLA compile options for the decode loop at `batch` rows on `platform` (None = XLA's defaults)."""
    few_rows = platform == "cpu" and CPU_FEW_ROWS[0] <= batch <= CPU_FEW_ROWS[1]
    return dict(FEW_ROWS_OPTIONS) if few_rows and frozenset(FEW_ROWS_OPTIONS.items()) not in _rejected else None


# Off CPU, a while loop whose trip count depends on data (rows done, the step to stop at) makes the runtime copy
# its predicate to the host every iteration (XLA:GPU's WhileThunk); a fixed trip count does not. So there the
# decode loop runs DECODE_CHUNK steps per call, masked past the requested step, and the host checks for EOS
# between calls. On CPU the predicate is on the host anyway, and the fixed chunk would only add masked steps at
# the end (up to DECODE_CHUNK - 1 of them, e.g. 1 in 16 at 16 new tokens; see docs/compare.md).
DECODE_CHUNK = 16


def decode_chunk(platform: str) -> int | None:
    """Steps per call of the decode loop on `platform`: None = a while loop to the requested step or until
    every row is done (CPU); an int = a fixed-trip loop of that many steps (`decode.sampling.loop_until`)."""
    return None if platform == "cpu" else DECODE_CHUNK


def run_with_compiler_options(run: Callable, options: dict | None):
    """`run(options)`; when this jaxlib rejects the options at compile time (nothing ran, so donated arguments
    are intact), the option set is remembered as rejected and `run(None)` compiles with XLA's defaults."""
    if options is not None:
        try:
            return run(options)
        except jax.errors.JaxRuntimeError as e:
            if "compile option" not in str(e):
                raise
            _rejected.add(frozenset(options.items()))
    return run(None)
