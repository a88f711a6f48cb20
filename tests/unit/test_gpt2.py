"""GPT-2: logit parity with transformers PyTorch in bf16 (fp32 on the tiny config: test_model_families.py), axis
names, sharding, checkpoint errors, config and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftcot_jax import models
from ftcot_jax.models import gpt2, sharding
from tests.helpers.models import TINY_GPT2, forward, max_diff_on_real, padded_batch
from tests.helpers.torch_parity import ours_from_torch, torch_logits, torch_tensors


@pytest.fixture
def pair(torch_pair):
    return torch_pair("gpt2")


def test_bf16_compute_keeps_fp32_params_and_logits(pair):
    tm, _ = pair
    ours = ours_from_torch(tm, TINY_GPT2, dtype=jnp.bfloat16)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    ids, mask = padded_batch(TINY_GPT2["vocab_size"])
    got = forward(ours, ids, mask)
    assert got.dtype == jnp.float32
    assert max_diff_on_real(got, torch_logits(tm, ids, mask), mask) < 0.1


def test_every_param_has_logical_axis_names():
    model = models.from_config(TINY_GPT2)
    state = nnx.state(model, nnx.Param)
    for path, v in nnx.to_flat_state(state):
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim, path


def test_sharded_forward_matches_unsharded(pair):
    _, ours = pair
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, state = nnx.split(ours)
    shardings = sharding.logical_to_sharding(state, mesh)
    state_sh = jax.device_put(state, shardings)
    spec = shardings["blocks"][0]["mlp"]["fc_kernel"].get_value().spec
    assert tuple(spec) == ("fsdp", "tensor")
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(7, 4, 1, 5))

    @jax.jit
    def fwd(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, attention_mask_BxL=mask)

    with jax.set_mesh(mesh):
        got = fwd(state_sh, jnp.asarray(ids), jnp.asarray(mask))
    want = forward(ours, ids, mask)
    assert max_diff_on_real(got, want, mask) <= 1e-5


def test_missing_and_misshaped_tensors_are_named(pair):
    tm, _ = pair
    tensors = torch_tensors(tm)
    cfg = gpt2.Config.from_hf_config(TINY_GPT2)
    broken = dict(tensors)
    del broken["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(KeyError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        models.params_from_hf(cfg, broken)
    broken = dict(tensors)
    broken["transformer.wpe.weight"] = np.zeros((3, 32), np.float32)
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight.*\(3, 32\).*\(64, 32\)"):
        models.params_from_hf(cfg, broken)


def test_config_round_trip_and_unsupported_type():
    cfg = gpt2.Config.from_hf_config(TINY_GPT2)
    assert gpt2.Config.from_hf_config(cfg.to_hf_config()) == cfg
    with pytest.raises(ValueError, match="model_type 'bert'.*gpt2"):
        models.from_config({"model_type": "bert"})


@jax.jit
def _dropped(key, x_BxLxD, token_ids_BxL):
    from ftcot_jax.models.layers import dropout

    return dropout(x_BxLxD, 0.25, key, token_ids_BxL), dropout(x_BxLxD, 0.25, key)


def test_dropout_rate_scale_and_per_token_masks():
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (4, 64, 128)), jnp.float32)
    tokens = jnp.arange(4 * 64, dtype=jnp.int32).reshape(4, 64)
    per_token, plain = _dropped(jax.random.key(0), x, tokens)
    for y in (np.asarray(per_token), np.asarray(plain)):
        dropped = y == 0
        assert abs(dropped.mean() - 0.25) < 0.01  # 32,768 draws: 3 sigma is 0.0072
        np.testing.assert_allclose(y[~dropped], np.asarray(x)[~dropped] / 0.75, rtol=1e-6)
    # Per-token masks follow the token, wherever it sits: a gathered (packed) layout drops the same units.
    order = np.random.default_rng(1).permutation(4 * 64)[:100].reshape(2, 50)
    x_packed = x.reshape(-1, 128)[order]
    packed, _ = _dropped(jax.random.key(0), x_packed, tokens.reshape(-1)[order])
    np.testing.assert_array_equal(np.asarray(packed), np.asarray(per_token).reshape(-1, 128)[order])


def _dropout_forward(model, ids, mask, key):
    graphdef, state = nnx.split(model)
    return np.asarray(_dropout_jit(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), key))


@jax.jit(static_argnums=0)
def _dropout_jit(graphdef, state, ids, mask, key):
    return nnx.merge(graphdef, state)(ids, attention_mask_BxL=mask, dropout_rng=key)


def test_dropout_only_in_training_each_rate_wired():
    """HF GPT2Config's embd/attn/resid_pdrop (default 0.1, as the reference trains) act only when a
    dropout key is passed (training); without one the model is the eval-mode model of the parity tests."""
    ids, mask = padded_batch(TINY_GPT2["vocab_size"])
    zero = dict(TINY_GPT2, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = models.from_config(TINY_GPT2, seed=0)
    assert (model.config.embd_pdrop, model.config.attn_pdrop, model.config.resid_pdrop) == (0.1, 0.1, 0.1)
    plain = np.asarray(forward(model, ids, mask))
    a, a2, b = (_dropout_forward(model, ids, mask, jax.random.key(k)) for k in (0, 0, 1))
    np.testing.assert_array_equal(a, a2)
    assert max_diff_on_real(a, b, mask) > 1e-3 and max_diff_on_real(a, plain, mask) > 1e-3
    np.testing.assert_array_equal(
        _dropout_forward(models.from_config(zero, seed=0), ids, mask, jax.random.key(0)), plain
    )
    for rate in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        one = models.from_config(dict(zero, **{rate: 0.5}), seed=0)
        assert max_diff_on_real(_dropout_forward(one, ids, mask, jax.random.key(0)), plain, mask) > 1e-3, rate


def test_dropout_config_round_trip_to_hf_and_bad_rates():
    import transformers

    cfg = gpt2.Config.from_hf_config(dict(TINY_GPT2, attn_pdrop=0.0, resid_pdrop=0.2))
    hf = transformers.GPT2Config(**cfg.to_hf_config())
    assert (hf.embd_pdrop, hf.attn_pdrop, hf.resid_pdrop) == (0.1, 0.0, 0.2)
    with pytest.raises(ValueError, match=r"resid_pdrop=1\.0 is not a probability"):
        gpt2.Config.from_hf_config(dict(TINY_GPT2, resid_pdrop=1.0))
