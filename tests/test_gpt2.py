"""GPT-2: logit parity with transformers PyTorch on a tiny random config, dtypes, axis names, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftcot_jax import models
from ftcot_jax.models import gpt2, sharding
from tests.helpers_models import (forward, TINY_GPT2, max_diff_on_real, ours_from_torch, padded_batch, torch_logits,
                                  torch_model, torch_tensors)


@pytest.fixture(scope="module")
def pair():
    tm = torch_model(TINY_GPT2)
    return tm, ours_from_torch(tm, TINY_GPT2)


def test_logits_match_torch_on_left_padded_batch(pair):
    tm, ours = pair
    ids, mask = padded_batch(TINY_GPT2["vocab_size"])
    ref = torch_logits(tm, ids, mask)
    got = forward(ours, ids, mask)
    assert got.dtype == jnp.float32
    assert max_diff_on_real(got, ref, mask) <= 1e-4


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
        gpt2.params_from_hf(cfg, broken)
    broken = dict(tensors)
    broken["transformer.wpe.weight"] = np.zeros((3, 32), np.float32)
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight.*\(3, 32\).*\(64, 32\)"):
        gpt2.params_from_hf(cfg, broken)


def test_config_round_trip_and_unsupported_type():
    cfg = gpt2.Config.from_hf_config(TINY_GPT2)
    assert gpt2.Config.from_hf_config(cfg.to_hf_config()) == cfg
    with pytest.raises(ValueError, match="model_type 'bert'.*gpt2"):
        models.from_config({"model_type": "bert"})
