"""Switches by platform (models/cpu_xla.py): the gradient barrier keeps XLA:CPU's backward fusions from growing
with depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest


def _largest_fusion_operands(n_layer: int) -> int:
    """Operands of the largest fusion in the compiled gradient of a GPT-2 loss with n_layer blocks."""
    from flax import nnx

    from ftcot_jax.models import gpt2

    model = gpt2.Model(gpt2.Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=n_layer, n_head=4))
    graphdef, params = nnx.split(model)
    ids = jnp.zeros((2, 16), jnp.int32)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(ids) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    import re

    return max(len(m.group(1).split(",")) for m in re.finditer(r"= \S+ fusion\(([^)]*)\)", hlo))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the barrier is CPU-only (models/cpu_xla.py grad_barrier)")
def test_backward_fusions_do_not_grow_with_depth():
    # Without cpu_xla.grad_barrier, XLA:CPU fused the residual gradient of every block above into each block's
    # backward (a 12-layer GPT-2 had 209-operand fusions; O(layers^2) work and minutes of compile time).
    assert _largest_fusion_operands(8) <= _largest_fusion_operands(2) + 2
