"""CPU workarounds (models/cpu_xla.py): the gradient barrier keeps backward fusions from growing with depth;
the hand-written `linear` backward gives autodiff's gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def test_linear_matches_einsum_values_and_gradients():
    """cpu_xla.linear's hand-written backward gives autodiff's gradients (n_in 1 and 2, multi-axis outputs)."""
    from ftcot_jax.models.cpu_xla import linear

    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (2, 3, 4, 5))
    w1, w2 = jax.random.normal(k[1], (5, 2, 3)), jax.random.normal(k[2], (4, 5, 6))
    for n_in, w, spec in ((1, w1, "btkd,dgc->btkgc"), (2, w2, "btkd,kdo->bto")):
        ours = lambda x, w, n_in=n_in: (linear(x, w, n_in=n_in) ** 2).sum()
        ref = lambda x, w, spec=spec: (jnp.einsum(spec, x, w) ** 2).sum()
        np.testing.assert_allclose(linear(x, w, n_in=n_in), jnp.einsum(spec, x, w), rtol=1e-5, atol=1e-5)
        for g_ours, g_ref in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
            np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)
