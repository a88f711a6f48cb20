"""The typed train state and the trainer's parts: one compiled step per model kind (fast tier), the loss chosen
from the model's interface, and a checkpoint written before the state was typed restoring and resuming."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftcot_jax.config import TrainConfig, from_dict
from ftcot_jax.models.api import CausalLM, Seq2SeqLM
from ftcot_jax.train import batches
from ftcot_jax.train.loop import Trainer, train
from ftcot_jax.train.loss import causal_lm_loss, loss_for, seq2seq_loss
from ftcot_jax.train.state import TrainState
from ftcot_jax.train.step import setup
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2, CHAR_T5

# Written by ftcot-jax at commit a645df8 (state saved as a dict), with OLD_CKPT_CONFIG below: 1 epoch of
# 2 steps (batch 4, last_letter_samples(8)), the char tokenizer, synchronous save of step 2.
OLD_CKPT = Path(__file__).parent.parent / "data" / "checkpoint_a645df8"
OLD_CKPT_MODEL = dict(CHAR_GPT2, n_layer=1, n_embd=16, n_head=2)

KINDS = {
    "causal": dict(model_config=dict(CHAR_GPT2, n_layer=1, n_embd=16, n_head=2, n_positions=64)),
    "seq2seq": dict(
        model_config=dict(CHAR_T5, num_layers=1, num_decoder_layers=1, d_model=16, d_kv=8, d_ff=32, num_heads=2)
    ),
}


def _cfg(run_dir, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), from_scratch=True, batch_size=4, mesh={"num_devices": 1}, bucket=16)
    return from_dict(TrainConfig, {**base, **kw})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_compiled_step_per_model_kind(kind, char_tokenizer):
    """The jitted, donated step on a TrainState moves the params and counts the step; the loss it reports is
    the loss function's value on the same micro-batch (no dropout)."""
    cfg = _cfg("unused", dropout=False, **KINDS[kind])
    st = setup(cfg, tokenizer=char_tokenizer)
    want_iface = CausalLM if kind == "causal" else Seq2SeqLM
    assert isinstance(st.student.abstract_model, want_iface)
    model_type = "decoder" if kind == "causal" else "encoder_decoder"
    enc = batches.encode_samples(
        last_letter_samples(4, method="ft_cot"), char_tokenizer, model_type=model_type, max_length=64
    )
    local = batches.Batcher(enc, 4, 1, seed=0, bucket=16, pad_id=0, decoder_start_id=0).batch(0, 0)
    state = st.init_state()
    assert isinstance(state, TrainState) and int(state.step) == 0
    p0 = jax.device_get(state.params)
    fed = st.put_batch(local)
    loss = loss_for(st.student.abstract_model, cfg.head_chunk)
    from flax import nnx

    with jax.set_mesh(st.mesh):
        mb = {k: v[0] for k, v in fed.items()}
        loss_sum, n = jax.jit(lambda p: loss(nnx.merge(st.student.graphdef, p), mb))(state.params)
    new, m = st.run_step(state, local)
    assert isinstance(new, TrainState) and int(new.step) == 1
    np.testing.assert_allclose(float(m["loss"]), float(loss_sum) / float(n), rtol=1e-5)
    assert float(m["label_tokens"]) == float(n) > 0
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(jax.device_get(new.params)), strict=True)
    )
    assert moved > 1e-5
    np.testing.assert_array_equal(np.asarray(new.rng), np.asarray(jax.random.key_data(jax.random.key(cfg.seed))))


def test_the_loss_is_chosen_once_from_the_interface(char_tokenizer):
    causal = setup(_cfg("unused", **KINDS["causal"]), tokenizer=char_tokenizer).student.abstract_model
    seq2seq = setup(_cfg("unused", **KINDS["seq2seq"]), tokenizer=char_tokenizer).student.abstract_model
    assert loss_for(seq2seq, 256) is seq2seq_loss
    assert loss_for(causal, 256).__qualname__ == causal_lm_loss(256).__qualname__
    with pytest.raises(TypeError, match="not a CausalLM or Seq2SeqLM"):
        loss_for(object(), 256)


def test_train_state_round_trips_through_the_checkpoint_layout():
    s = TrainState(
        params={"w": jnp.ones(3)}, opt_state=(jnp.zeros(3),), step=jnp.int32(5), rng=jnp.zeros(2, jnp.uint32)
    )
    tree = s.to_tree()
    assert sorted(tree) == ["opt_state", "params", "rng", "step"]  # the layout checkpoints have always had
    back = TrainState.from_tree(tree)
    assert jax.tree.structure(back) == jax.tree.structure(s)
    assert int(back.step) == 5


def test_a_checkpoint_written_before_the_state_was_typed_restores_and_resumes(tmp_path, char_tokenizer):
    run = tmp_path / "run"
    shutil.copytree(OLD_CKPT, run / "checkpoints")
    old = dict(bucket=64, keep_last=1, keep_best=0, async_checkpointing=False, export=False)
    cfg = _cfg(run, model_config=OLD_CKPT_MODEL, epochs=2, eval={"every_epochs": 0}, **old)
    samples = last_letter_samples(8)
    trainer = Trainer.create(cfg, tokenizer=char_tokenizer, samples=samples)
    trainer.restore_or_init(require_checkpoint=True)
    s = trainer.state
    assert isinstance(s, TrainState)
    assert (trainer.step, trainer.epoch, trainer.index) == (2, 1, 0)
    np.testing.assert_array_equal(np.asarray(s.rng), np.asarray(jax.random.key_data(jax.random.key(cfg.seed))))
    counts = [int(x) for x in jax.tree.leaves(s.opt_state) if getattr(x, "shape", None) == () and x.dtype == jnp.int32]
    assert counts and all(c == 2 for c in counts)  # AdamW took two steps
    fresh = jax.device_get(trainer.setup.init_state().params)
    assert (
        max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(jax.device_get(s.params)), strict=True)
        )
        > 1e-6
    )
    trainer.logger.close()
    trainer.ckpt.close()
    result = train(cfg, tokenizer=char_tokenizer, samples=samples)  # resumes at step 2 and runs epoch 2
    assert result.resumed_from == 2 and result.steps == 4 and sorted(result.losses) == [3, 4]
    assert all(np.isfinite(v) for v in result.losses.values())
