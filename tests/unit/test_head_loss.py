"""The label-only LM head (train/head_loss.py) gives the loss and gradients of the full-logits cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftcot_jax.train.head_loss import label_cross_entropy
from tests.helpers.models import max_tree_diff
from tests.helpers.train_step import run_step, step_config


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

    (loss, n), grads = jax.jit(
        jax.value_and_grad(
            lambda x, w: label_cross_entropy(x, w, targets, weights, groups=groups, chunk=chunk), (0, 1), has_aux=True
        )
    )(x, w)
    ref, ref_grads = jax.value_and_grad(_full, (0, 1))(x, w, targets, weights)
    assert float(n) == float(weights.sum())
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
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
def test_train_step_with_label_head_equals_full_logits(char_tokenizer, step_samples, mesh):
    _, p_full, m_full, _ = run_step(step_config(mesh, head_chunk=0), char_tokenizer, step_samples)
    _, p_head, m_head, _ = run_step(step_config(mesh, head_chunk=16), char_tokenizer, step_samples)
    assert abs(float(m_full["loss"]) - float(m_head["loss"])) <= 1e-5
    assert float(m_full["label_tokens"]) == float(m_head["label_tokens"])
    assert max_tree_diff(p_full, p_head) <= 1e-5
