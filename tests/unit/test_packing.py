"""Padding-free training layout (layers.Packing, batches.packing_indices): the same loss and gradients as
the padded batch, on one device and on a mesh, for GPT-2 and Llama students."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftcot_jax.models import gpt2, llama
from ftcot_jax.models.layers import Packing
from ftcot_jax.train import batches, head_loss
from tests.helpers.models import max_tree_diff
from tests.helpers.train_step import run_step, step_config


def _golden_batch():
    # rows (L = 6): 4 real tokens, loss on 2..3 | 6 real, loss on 1..2 | filler row (attended, no loss)
    #               | 2 real, loss on 0
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], np.int32)
    loss = np.zeros((4, 6), np.float32)
    loss[0, 2:4] = 1
    loss[1, 1:3] = 1
    loss[3, 0] = 1
    return mask[None], loss[None]


def test_needed_tokens_and_indices_golden():
    mask, loss = _golden_batch()
    keep = batches.needed_tokens(mask, loss)[0]
    # row 1: positions after its last loss position (2) influence no loss; the filler row needs nothing
    np.testing.assert_array_equal(
        keep.astype(int), [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    )
    index, inverse = batches.packing_indices(mask, loss, groups=2, multiple=4)
    # group 0 = rows 0, 1 (M = 12): 7 tokens -> N = 8; group 1 = rows 2, 3: 1 token
    assert index.shape == (1, 2, 8) and inverse.shape == (1, 2, 12)
    np.testing.assert_array_equal(index[0, 0], [0, 1, 2, 3, 6, 7, 8, 12])
    np.testing.assert_array_equal(index[0, 1], [6, 12, 12, 12, 12, 12, 12, 12])
    for g in range(2):  # inverse partial permutations of each other
        real = index[0, g][index[0, g] < 12]
        np.testing.assert_array_equal(inverse[0, g][real], np.arange(len(real)))
        assert (np.delete(inverse[0, g], real) == 8).all()
    # no gain -> no packing; a given size is used as is (hosts agree on it)
    assert batches.packing_indices(mask, loss, groups=1, multiple=24) is None
    assert batches.packing_indices(mask, loss, groups=1, multiple=4, size=12)[0].shape == (1, 1, 12)
    with pytest.raises(ValueError, match="3 data shards"):
        batches.packing_indices(mask, loss, groups=3, multiple=4)


def test_pack_unpack_gradients_are_each_others_gather():
    mask, loss = _golden_batch()
    index, inverse = batches.packing_indices(mask, loss, groups=2, multiple=4)
    p = Packing(jnp.asarray(index[0]), jnp.asarray(inverse[0]), 4, 6)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6, 3)), jnp.float32)
    keep = batches.needed_tokens(mask, loss)[0]
    round_trip = np.asarray(p.unpack(p.pack(x)))
    np.testing.assert_array_equal(round_trip[keep], np.asarray(x)[keep])
    assert (round_trip[~keep] == 0).all()
    w = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 3)), jnp.float32)
    g = jax.grad(lambda x: jnp.sum(p.pack(x) * w))(x)  # = unpack(w)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(p.unpack(w)))
    g2 = jax.grad(lambda y: jnp.sum(p.unpack(y) * x))(w)  # = pack(x)
    np.testing.assert_array_equal(np.asarray(g2), np.asarray(p.pack(x)))


def _random_batch(B=4, L=12, V=60, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [12, 7, 3, 9]
    ids = rng.integers(1, V, (B, L)).astype(np.int32)
    mask = np.zeros((B, L), np.int32)
    loss = np.zeros((B, L), np.float32)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
        ids[r, n:] = 0
        loss[r, max(n // 2 - 1, 0) : n - 1] = 1
    targets = np.concatenate([ids[:, 1:], np.zeros((B, 1), np.int32)], axis=1)
    return ids, mask, targets, loss


@pytest.mark.parametrize(
    "family,cfg",
    [
        (gpt2, gpt2.Config(vocab_size=60, n_positions=32, n_embd=32, n_layer=2, n_head=4)),
        (
            llama,
            llama.Config(
                vocab_size=60,
                hidden_size=32,
                intermediate_size=48,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=True,
            ),
        ),
    ],
)
def test_packed_loss_and_gradients_equal_padded(family, cfg):
    ids, mask, targets, loss = _random_batch()
    index, inverse = batches.packing_indices(mask[None], loss[None], groups=2, multiple=4)
    assert index.shape[-1] < inverse.shape[-1]  # really packed
    model = family.Model(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    a = {k: jnp.asarray(v) for k, v in dict(ids=ids, mask=mask, targets=targets, loss=loss).items()}

    def padded(params):
        m = nnx.merge(graphdef, params)
        x, _ = m.features(a["ids"], attention_mask_BxL=a["mask"])
        return head_loss.label_cross_entropy(x, m.head_VxD(), a["targets"], a["loss"], groups=2, chunk=8)[0]

    def packed(params):
        m = nnx.merge(graphdef, params)
        p = Packing(jnp.asarray(index[0]), jnp.asarray(inverse[0]), *ids.shape)
        x, _ = m.features(a["ids"], attention_mask_BxL=a["mask"], packing=p)
        assert x.shape == (2, index.shape[-1], x.shape[-1])
        return head_loss.label_cross_entropy(
            x, m.head_VxD(), p.pack(a["targets"]), p.pack(a["loss"]), groups=2, chunk=8
        )[0]

    l0, g0 = jax.jit(jax.value_and_grad(padded))(params)
    l1, g1 = jax.jit(jax.value_and_grad(packed))(params)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    # fp32 gradients summed in another order (the packed rows): equal up to rounding, not bit for bit
    assert max_tree_diff(g0, g1) <= 5e-6


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(1, 1, 1), (2, 2, 2)])
def test_train_step_packed_equals_padded(char_tokenizer, step_samples, mesh):
    _, p_pad, m_pad, _ = run_step(step_config(mesh, head_chunk=16, pack_multiple=0), char_tokenizer, step_samples)
    _, p_pack, m_pack, st = run_step(step_config(mesh, head_chunk=16, pack_multiple=8), char_tokenizer, step_samples)
    b = batches.Batcher(step_samples, 8, 1, seed=0, bucket=16, pad_id=0).batch(0, 0)
    with jax.set_mesh(st.mesh):
        fed = st.put_batch(b)
    groups = mesh[0] * mesh[1]
    assert fed["pack_index"].shape[:2] == (1, groups)
    assert fed["pack_index"].shape[2] < fed["unpack_index"].shape[2]  # this batch really was packed
    assert abs(float(m_pad["loss"]) - float(m_pack["loss"])) <= 1e-6
    assert float(m_pad["label_tokens"]) == float(m_pack["label_tokens"])
    assert max_tree_diff(p_pad, p_pack) <= 1e-6
