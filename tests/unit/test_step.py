"""The jitted train step (train/step.py): same result on any mesh, grad accumulation == one big batch, loss on
labels only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftcot_jax.config import TrainConfig, from_dict
from ftcot_jax.train import batches
from ftcot_jax.train.step import make_loss_fn, setup, uses_label_head
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_T5, max_tree_diff
from tests.helpers.train_step import run_step, step_config

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


@pytest.fixture
def tok(char_tokenizer):
    return char_tokenizer


@pytest.fixture
def encoded(step_samples):
    return step_samples


@pytest.mark.slow
def test_same_loss_and_params_on_every_mesh(tok, encoded):
    p0_ref, p1_ref, m_ref, _ = run_step(step_config((1, 1, 1)), tok, encoded)
    assert max_tree_diff(p0_ref, p1_ref) > 1e-4  # the step really moved the params
    for mesh in MESHES:
        p0, p1, m, st = run_step(step_config(mesh), tok, encoded)
        assert dict(st.mesh.shape) == dict(zip(("data", "fsdp", "tensor"), mesh, strict=True))
        assert max_tree_diff(p0, p0_ref) == 0.0, mesh  # same init whatever the sharding
        assert abs(float(m["loss"]) - float(m_ref["loss"])) <= 1e-5, mesh
        assert max_tree_diff(p1, p1_ref) <= 1e-5, mesh


@pytest.mark.slow
def test_gpt2_dropout_trains_on_the_fast_path_and_changes_the_step(tok, encoded):
    """GPT-2's embd/attn/resid dropout (HF defaults 0.1, as the reference trains) is on in training, on the
    label-only head and the padding-free layout; test_same_loss_and_params_on_every_mesh and
    test_packing's packed == padded step run with it on too (per-token masks)."""
    st = run_step(step_config((1, 1, 1)), tok, encoded)[3]
    assert st.student.config.resid_pdrop == 0.1 and st.cfg.dropout
    assert uses_label_head(st.student, st.cfg.head_chunk) and st.pack_multiple > 0
    _, p_on, m_on, _ = run_step(step_config((1, 1, 1)), tok, encoded)
    _, p_off, m_off, _ = run_step(step_config((1, 1, 1), dropout=False), tok, encoded)
    assert abs(float(m_on["loss"]) - float(m_off["loss"])) > 1e-5
    assert max_tree_diff(p_on, p_off) > 1e-6
    b = batches.Batcher(encoded, 8, 1, seed=0, bucket=16, pad_id=0).batch(0, 0)
    assert float(m_on["computed_tokens"]) < b["input_ids"].size  # the packed layout
    mb = {k: jnp.asarray(v[0]) for k, v in b.items()}
    params = st.init_state().params
    loss_fn = jax.jit(make_loss_fn(st.student, use_dropout=True, head_chunk=16))
    a, a2, c = (float(loss_fn(params, mb, jax.random.key(k))[0]) for k in (1, 1, 2))
    assert a == a2 and a != c  # the key decides the masks
    plain = float(make_loss_fn(st.student, use_dropout=False, head_chunk=16)(params, mb, None)[0])
    assert a != plain


def test_params_and_optimizer_are_sharded_by_the_rules(tok):
    st = setup(step_config((2, 2, 2)), tokenizer=tok)
    state = st.init_state()
    wte = state.params["wte"]  # ("vocab", "embed") -> ("tensor", "fsdp")
    assert wte.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    mu = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", None) == wte.shape]
    assert mu and all(x.sharding.spec == wte.sharding.spec for x in mu)
    assert len(wte.addressable_shards) == 8 and wte.addressable_shards[0].data.shape == (wte.shape[0] // 2, 16)


@pytest.mark.slow  # compiles train steps: 10-20 s on 2 CPU cores
def test_grad_accumulation_equals_one_big_batch(tok, encoded):
    # Without dropout: each micro-batch draws its masks from its own key, so with dropout the two differ.
    cfg1 = step_config((1, 1, 1), dropout=False)
    cfg4 = step_config((1, 1, 1), grad_accum=4, dropout=False)
    _, p_big, m_big, _ = run_step(cfg1, tok, encoded, accum=1)
    _, p_acc, m_acc, _ = run_step(cfg4, tok, encoded, accum=4)
    assert abs(float(m_big["loss"]) - float(m_acc["loss"])) <= 1e-5
    assert float(m_big["label_tokens"]) == float(m_acc["label_tokens"])
    assert max_tree_diff(p_big, p_acc) <= 1e-5
    # The test has teeth: a mean of per-micro-batch means would be a different loss here.
    b = batches.Batcher(encoded, 8, 4, seed=0, bucket=16, pad_id=0).batch(0, 0)
    st = run_step(cfg1, tok, encoded)[3]
    loss_fn = make_loss_fn(st.student, use_dropout=False)
    params = st.init_state().params
    per_micro = [loss_fn(params, {k: v[i] for k, v in b.items()}, None) for i in range(4)]
    mean_of_means = np.mean([float(s / n) for s, n in per_micro])
    assert abs(mean_of_means - float(sum(s for s, _ in per_micro) / sum(n for _, n in per_micro))) > 1e-3


@pytest.mark.slow  # compiles train steps: 10-20 s on 2 CPU cores
def test_loss_counts_exactly_the_label_tokens(tok, encoded):
    """The trainer's loss equals a hand-computed CE over the label+EOS positions, and changing the
    logits of prompt/padding positions does not change it."""
    st = run_step(step_config((1, 1, 1)), tok, encoded)[3]
    params = st.init_state().params
    b = batches.Batcher(encoded, 8, 1, seed=0, bucket=16, pad_id=0).batch(0, 0)
    mb = {k: jnp.asarray(v[0]) for k, v in b.items()}
    loss_sum, n = make_loss_fn(st.student, use_dropout=False)(params, mb, None)
    from flax import nnx

    model = nnx.merge(st.student.graphdef, params)
    logits = np.asarray(model(mb["input_ids"], attention_mask_BxL=mb["attention_mask"], positions_BxL=mb["positions"]))
    logp = np.asarray(jax.nn.log_softmax(logits))
    want, count = 0.0, 0
    for r in range(8):
        i = int(batches.Batcher(encoded, 8, 1, seed=0).rows(0, 0)[0, r])
        p, t = encoded.source[i], encoded.target[i]
        seq = p + t
        for j in range(len(p) - 1, len(seq) - 1):  # position j predicts label token seq[j+1]
            want -= logp[r, j, seq[j + 1]]
            count += 1
    assert int(n) == count == sum(len(encoded.target[i]) for i in range(8))
    np.testing.assert_allclose(float(loss_sum), want, rtol=1e-5)


def _t5_cfg(mesh, **kw):
    t5 = dict(CHAR_T5, num_layers=1, num_decoder_layers=1, dropout_rate=0.1)
    m = {"data": mesh[0], "fsdp": mesh[1], "tensor": mesh[2], "num_devices": mesh[0] * mesh[1] * mesh[2]}
    return from_dict(TrainConfig, dict(run_dir="unused", from_scratch=True, model_config=t5, mesh=m, **kw))


@pytest.mark.slow
def test_encoder_decoder_step_and_loss(tok):
    samples = last_letter_samples(8, seed=3, method="ft_cot")
    enc = batches.encode_samples(samples, tok, model_type="encoder_decoder", max_length=128)
    batch = batches.Batcher(enc, 8, 1, seed=0, bucket=16, pad_id=0, decoder_start_id=0).batch(0, 0)
    results = {}
    for mesh in [(1, 1, 1), (2, 2, 2)]:
        st = setup(_t5_cfg(mesh, dropout=False), tokenizer=tok)
        state = st.init_state()
        if mesh == (1, 1, 1):  # the loss is the CE of the target tokens (label + EOS), nothing else
            params = state.params
            mb = {k: jnp.asarray(v[0]) for k, v in batch.items()}
            loss_sum, n = make_loss_fn(st.student, use_dropout=False)(params, mb, None)
            from flax import nnx

            logits = nnx.merge(st.student.graphdef, params)(
                mb["input_ids"],
                attention_mask_BxL=mb["attention_mask"],
                decoder_input_ids_BxT=mb["decoder_input_ids"],
                decoder_attention_mask_BxT=mb["decoder_attention_mask"],
            )
            logp = np.asarray(jax.nn.log_softmax(logits))
            rows = batches.Batcher(enc, 8, 1, seed=0).rows(0, 0)[0]
            want = -sum(logp[r, j, t] for r, i in enumerate(rows) for j, t in enumerate(enc.target[i]))
            assert int(n) == sum(len(enc.target[i]) for i in rows)
            np.testing.assert_allclose(float(loss_sum), want, rtol=1e-5)
        state, m = st.run_step(state, batch)
        results[mesh] = (float(m["loss"]), jax.device_get(state.params))
    assert abs(results[(1, 1, 1)][0] - results[(2, 2, 2)][0]) <= 1e-5
    assert max_tree_diff(results[(1, 1, 1)][1], results[(2, 2, 2)][1]) <= 1e-5
    # dropout (the reference trains in train mode) reaches the T5 module: a key changes the loss
    mb = {k: jnp.asarray(v[0]) for k, v in batch.items()}
    params = st.init_state().params
    plain = make_loss_fn(st.student, use_dropout=False)(params, mb, None)[0]
    dropped = make_loss_fn(st.student, use_dropout=True)(params, mb, jax.random.key(1))[0]
    assert abs(float(dropped) - float(plain)) > 1e-4


@pytest.mark.slow  # compiles train steps: 10-20 s on 2 CPU cores
def test_bf16_compute_keeps_fp32_params_and_close_loss(tok, encoded):
    _, p32, m32, _ = run_step(step_config((1, 1, 1)), tok, encoded)
    _, p16, m16, _ = run_step(step_config((1, 1, 1), precision="bf16"), tok, encoded)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(p16))
    assert abs(float(m16["loss"]) - float(m32["loss"])) <= 0.02 * float(m32["loss"])
    assert float(m16["loss"]) != float(m32["loss"])  # really computed in bf16
