"""The label-only LM head (head_loss.py) gives the loss and gradients of the full-logits cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_step import _cfg, _max_diff, _run, encoded, tok  # noqa: F401 (fixtures)

from ftcot_jax.train.head_loss import label_cross_entropy


def _full(x, w, targets, weights):
    logits = jnp.einsum("bld,vd->blv", x, w)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)


@pytest.mark.parametrize("groups,chunk", [(1, 4), (1, 64), (2, 8), (4, 5)])
def test_values_and_gradients_match_full_logits(groups, chunk):
    rng = np.random.default_rng(0)
    B, L, D, V = 4, 13, 16, 50
    x = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    weights = jnp.asarray(rng.random((B, L)) < 0.4, jnp.float32).at[3].set(0.0)  # one row without labels

    (loss, n), grads = jax.jit(jax.value_and_grad(
        lambda x, w: label_cross_entropy(x, w, targets, weights, groups=groups, chunk=chunk), (0, 1),
        has_aux=True))(x, w)
    ref, ref_grads = jax.value_and_grad(_full, (0, 1))(x, w, targets, weights)
    assert float(n) == float(weights.sum())
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5)
    # positions without loss get exactly zero gradient (they never reach the head)
    assert float(jnp.abs(grads[0][weights == 0]).max()) == 0.0


def test_no_label_tokens_gives_zero_loss_and_gradient():
    x = jnp.ones((2, 8, 4))
    w = jnp.ones((10, 4))
    loss, n = label_cross_entropy(x, w, jnp.zeros((2, 8), jnp.int32), jnp.zeros((2, 8)), chunk=4)
    g = jax.grad(lambda w: label_cross_entropy(x, w, jnp.zeros((2, 8), jnp.int32), jnp.zeros((2, 8)), chunk=4)[0])(w)
    assert float(loss) == 0.0 and float(n) == 0.0 and float(jnp.abs(g).max()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 1, 1), (2, 2, 2)])
def test_train_step_with_label_head_equals_full_logits(tok, encoded, mesh):  # noqa: F811
    _, p_full, m_full, _ = _run(_cfg(mesh, head_chunk=0), tok, encoded)
    _, p_head, m_head, _ = _run(_cfg(mesh, head_chunk=16), tok, encoded)
    assert abs(float(m_full["loss"]) - float(m_head["loss"])) <= 1e-5
    assert float(m_full["label_tokens"]) == float(m_head["label_tokens"])
    assert _max_diff(p_full, p_head) <= 1e-5


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


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the barrier is CPU-only (models/layers.py grad_barrier)")
def test_backward_fusions_do_not_grow_with_depth():
    # Without layers.grad_barrier, XLA:CPU fused the residual gradient of every block above into each block's
    # backward (a 12-layer GPT-2 had 209-operand fusions; O(layers^2) work and minutes of compile time).
    assert _largest_fusion_operands(8) <= _largest_fusion_operands(2) + 2


def test_linear_matches_einsum_values_and_gradients():
    """layers.linear's hand-written backward gives autodiff's gradients (n_in 1 and 2, multi-axis outputs)."""
    from ftcot_jax.models.cpu_xla import linear

    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (2, 3, 4, 5))
    w1, w2 = jax.random.normal(k[1], (5, 2, 3)), jax.random.normal(k[2], (4, 5, 6))
    for n_in, w, spec in ((1, w1, "btkd,dgc->btkgc"), (2, w2, "btkd,kdo->bto")):
        ours = lambda x, w: (linear(x, w, n_in=n_in) ** 2).sum()  # noqa: E731
        ref = lambda x, w: (jnp.einsum(spec, x, w) ** 2).sum()  # noqa: E731
        np.testing.assert_allclose(linear(x, w, n_in=n_in), jnp.einsum(spec, x, w), rtol=1e-5, atol=1e-5)
        for g_ours, g_ref in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
            np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-4)
