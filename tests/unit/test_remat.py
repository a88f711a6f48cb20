"""train.remat (models.layers.remat_block): rematerialised blocks give the same loss and gradients as stored
activations, for every model kind, with dropout on; and on a TPU compile they need less memory."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from ftcot_jax.config import TrainConfig, from_dict
from ftcot_jax.train import batches
from ftcot_jax.train.step import make_loss_fn, setup
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2, CHAR_LLAMA, CHAR_T5, max_tree_diff

MODELS = {
    "gpt2": (dict(CHAR_GPT2, n_layer=2, n_embd=32, n_head=4), "decoder"),
    "llama": (dict(CHAR_LLAMA, num_hidden_layers=2), "decoder"),
    "t5": (dict(CHAR_T5, num_layers=2, num_decoder_layers=2), "encoder_decoder"),
}


def _cfg(model_config, **kw) -> TrainConfig:
    base = dict(run_dir="unused", from_scratch=True, model_config=model_config, mesh={"num_devices": 1}, bucket=16)
    return from_dict(TrainConfig, {**base, **kw})


@pytest.mark.parametrize(
    "family", ["gpt2", pytest.param("llama", marks=pytest.mark.slow), pytest.param("t5", marks=pytest.mark.slow)]
)
def test_remat_keeps_loss_and_gradients(family, char_tokenizer):
    model_config, kind = MODELS[family]
    enc = batches.encode_samples(
        last_letter_samples(4, method="ft_cot"), char_tokenizer, model_type=kind, max_length=64
    )
    local = batches.Batcher(enc, 4, 1, seed=0, bucket=16, pad_id=0, decoder_start_id=0).batch(0, 0)
    mb = {k: jnp.asarray(v[0]) for k, v in local.items()}
    results = {}
    for remat in ("none", "block", "full"):
        st = setup(_cfg(model_config, remat=remat, head_chunk=16, pack_multiple=0), tokenizer=char_tokenizer)
        assert nnx_remat(st) == remat
        params = st.init_state().params
        loss_fn = make_loss_fn(st.student, use_dropout=True, head_chunk=16)

        def mean_loss(p, loss_fn=loss_fn):
            total, n = loss_fn(p, mb, jax.random.key(3))
            return total / n

        results[remat] = jax.jit(jax.value_and_grad(mean_loss))(params)
    (l0, g0) = results["none"]
    for remat in ("block", "full"):
        l1, g1 = results[remat]
        assert abs(float(l1) - float(l0)) <= 1e-6, remat
        assert max_tree_diff(g0, g1) <= 1e-6, remat


def nnx_remat(st) -> str:
    return st.student.make_model().remat


def test_bad_remat_is_a_one_line_error():
    with pytest.raises(ValueError, match="remat"):
        _cfg(MODELS["gpt2"][0], remat="sometimes")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed")
def test_remat_lowers_the_peak_of_a_tpu_compile():
    from ftcot_jax.aot.compile import compile_config
    from ftcot_jax.aot.topology import parse

    mc = dict(CHAR_GPT2, n_layer=2, n_embd=64, n_head=4, n_positions=1024)  # long rows: activations dominate
    sl = parse("v5e:2x2")
    peaks = {}
    for remat in ("none", "block", "full"):
        cfg = _cfg(mc, remat=remat, batch_size=32, max_length=1024, mesh={"data": -1}, pack_multiple=0)
        peaks[remat] = compile_config(cfg, sl, decode=False).programs[0].memory.peak
    assert peaks["full"] < peaks["block"] < peaks["none"]
