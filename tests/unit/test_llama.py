"""Llama family: logit parity with transformers PyTorch (Llama GQA + tied + llama3 RoPE; Qwen2 qkv bias, untied;
Llama with linear RoPE scaling and attention/mlp biases)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftcot_jax import models
from ftcot_jax.models import llama
from tests.helpers.models import TINY_LLAMA, TINY_QWEN2, forward, max_diff_on_real, padded_batch
from tests.helpers.torch_parity import ours_from_torch, torch_logits, torch_model, torch_tensors

LINEAR_BIASED = dict(
    TINY_LLAMA,
    rope_scaling={"rope_type": "linear", "factor": 2.0},
    rope_theta=500.0,
    attention_bias=True,
    mlp_bias=True,
    tie_word_embeddings=False,
    num_key_value_heads=3,
    head_dim=16,
)


MISTRAL = dict(TINY_LLAMA, model_type="mistral", sliding_window=None, rope_scaling=None, tie_word_embeddings=False)


@pytest.mark.torch
@pytest.mark.parametrize(
    "hf_config", [TINY_LLAMA, TINY_QWEN2, LINEAR_BIASED, MISTRAL], ids=["llama3", "qwen2", "linear", "mistral"]
)
def test_logits_match_torch_on_left_padded_batch(hf_config):
    tm = torch_model(hf_config)
    ours = ours_from_torch(tm, hf_config)
    # long enough that llama3's rescaled low frequencies matter (original_max_position_embeddings=16)
    ids, mask = padded_batch(hf_config["vocab_size"], lengths=(40, 23, 1))
    ref = torch_logits(tm, ids, mask)
    got = forward(ours, ids, mask)
    assert got.dtype == jnp.float32
    assert max_diff_on_real(got, ref, mask) <= 1e-4


@pytest.mark.torch
def test_params_round_trip_to_hf_names():
    tm = torch_model(TINY_QWEN2)
    tensors = torch_tensors(tm)
    ours = ours_from_torch(tm, TINY_QWEN2)
    back = models.params_to_hf(ours)
    assert set(back) == {k for k in tensors if "rotary" not in k}
    for k, v in back.items():
        np.testing.assert_array_equal(v, tensors[k], err_msg=k)


def test_config_conversions_and_errors():
    cfg = models.config_from_hf(TINY_LLAMA)
    assert cfg.num_key_value_heads == 2 and cfg.rope["rope_type"] == "llama3"
    assert llama.Config.from_hf_config(cfg.to_hf_config()) == cfg
    v5 = {k: v for k, v in TINY_QWEN2.items() if k != "rope_theta"} | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}
    }
    assert models.config_from_hf(v5).rope_theta == 123.0 and models.config_from_hf(v5).qkv_bias
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        models.config_from_hf(dict(TINY_LLAMA, rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ValueError, match="use_sliding_window"):
        models.config_from_hf(dict(TINY_QWEN2, use_sliding_window=True))
    cfg = models.config_from_hf(TINY_LLAMA)
    tensors = models.params_to_hf(models.from_config(TINY_LLAMA))
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 48), np.float32)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(5, 48\).*\(16, 48\)"):
        models.params_from_hf(cfg, tensors)


def test_attention_dropout_read_from_hf_and_only_with_a_key():
    from flax import nnx

    assert models.config_from_hf(TINY_LLAMA).attention_dropout == 0.0  # HF's default
    cfg = dict(TINY_LLAMA, attention_dropout=0.5)
    assert models.config_from_hf(cfg).to_hf_config()["attention_dropout"] == 0.5
    ids, mask = padded_batch(TINY_LLAMA["vocab_size"])
    run = jax.jit(lambda g, s, k: nnx.merge(g, s)(ids, attention_mask_BxL=mask, dropout_rng=k), static_argnums=0)
    model = models.from_config(cfg, seed=0)
    plain = np.asarray(forward(model, ids, mask))
    assert max_diff_on_real(np.asarray(run(*nnx.split(model), jax.random.key(0))), plain, mask) > 1e-3
    model = models.from_config(TINY_LLAMA, seed=0)  # rate 0: a key changes nothing
    np.testing.assert_array_equal(np.asarray(run(*nnx.split(model), jax.random.key(0))), plain)
    with pytest.raises(ValueError, match=r"attention_dropout=1\.5"):
        models.config_from_hf(dict(TINY_LLAMA, attention_dropout=1.5))
