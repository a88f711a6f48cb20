"""T5 v1.0 (relu, tied head) and T5 v1.1 / Flan-T5 (gated-gelu, untied head) against transformers PyTorch.

Random-init tiny configs only (no hub access). Padding in encoder and decoder inputs, greedy generation vs
HF generate, cached decoding vs full recomputation, HF export round trips, and bad-checkpoint errors.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftcot_jax import decode, models  # noqa: E402
from ftcot_jax.models import t5  # noqa: E402
from ftcot_jax.models.t5_positions import relative_position_bucket_table  # noqa: E402
from tests.helpers.models import TINY_T5  # noqa: E402
from tests.helpers.toy_tokenizers import ModuloLetterTokenizer  # noqa: E402

pytestmark = pytest.mark.torch

V = TINY_T5["vocab_size"]
VARIANTS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_config(variant, num_layers=2, num_decoder_layers=2):
    """TINY_T5 without dropout as a transformers config. (HF generate sizes its cache by num_layers, so the
    generation tests keep the stacks equal.)"""
    tiny = {k: v for k, v in TINY_T5.items() if k != "model_type"}
    return transformers.T5Config(
        **dict(
            tiny, num_layers=num_layers, num_decoder_layers=num_decoder_layers, dropout_rate=0.0, **VARIANTS[variant]
        )
    )


@functools.cache
def build(variant):
    """(variant, HF torch model, our model with the HF weights)."""
    torch.manual_seed(0)
    hc = hf_config(variant)
    hf = transformers.T5ForConditionalGeneration(hc).eval()
    if not hc.scale_decoder_outputs:
        # transformers v5 ties lm_head to shared at random init; give v1.1 a head of its own
        # (as real Flan-T5 checkpoints have) by loading a distinct one.
        hf.all_tied_weights_keys.pop("lm_head.weight", None)
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
        assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr()
    cfg = t5.Config.from_hf_config(hc.to_dict())
    assert cfg.tie_word_embeddings == (variant == "v1.0")
    model = nnx.eval_shape(lambda: t5.Model(cfg))  # structure only; the HF weights fill it
    tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    nnx.update(model, jax.tree.map(jnp.asarray, models.params_from_hf(cfg, tensors)))
    return variant, hf, model


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    return build(request.param)


@pytest.fixture(scope="module")
def v10():
    # Decoding-loop features that don't depend on the variant run once (each compile costs seconds).
    return build("v1.0")


def padded_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, V, (3, 20))
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    dec = rng.integers(2, V, (3, 9))
    dec[:, 0] = 0
    dmask = np.ones_like(dec)
    dmask[0, 6:] = 0
    dmask[2, 3:] = 0
    dec[dmask == 0] = 0
    return ids, mask, dec, dmask


def hf_logits(hf, ids, mask, dec, dmask):
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec),
            decoder_attention_mask=torch.tensor(dmask),
        ).logits.numpy()


# Jitted with the params as arguments: one compile per model structure (eager op-by-op is far slower).
@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, mask, dec, dmask):
    return nnx.merge(graphdef, state)(
        ids, attention_mask_BxL=mask, decoder_input_ids_BxT=dec, decoder_attention_mask_BxT=dmask
    )


def our_logits(model, ids, mask, dec, dmask):
    return np.asarray(_forward(*nnx.split(model), ids, mask, dec, dmask))


@functools.partial(jax.jit, static_argnums=0)
def _full_and_cross(graphdef, state, ids, mask, dec):
    model = nnx.merge(graphdef, state)
    enc = model.encode(ids, mask)
    return model.decode(dec, enc, attention_mask_BxL=mask), model.cross_kv(enc)


@functools.partial(jax.jit, static_argnums=0)
def _step(graphdef, state, tokens, index, cache, cross, mask):
    return nnx.merge(graphdef, state).decode_step(tokens, index, cache, cross, mask)


def test_logits_match_hf_on_padded_batch(pair):
    _, hf, model = pair
    batch = padded_batch()
    ref, out = hf_logits(hf, *batch), our_logits(model, *batch)
    assert out.dtype == np.float32 and out.shape == ref.shape == (3, 9, V)
    assert np.abs(out - ref).max() <= 1e-4


def test_unequal_depths_and_bf16_compute():
    torch.manual_seed(1)
    hf = transformers.T5ForConditionalGeneration(hf_config("v1.0", 1, 3)).eval()
    cfg = t5.Config.from_hf_config(hf.config.to_dict())
    assert (cfg.num_layers, cfg.num_decoder_layers) == (1, 3)
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    model = nnx.eval_shape(lambda: t5.Model(cfg))
    nnx.update(model, models.params_from_hf(cfg, tensors))
    batch = padded_batch(5)
    ref = hf_logits(hf, *batch)
    assert np.abs(our_logits(model, *batch) - ref).max() <= 1e-4
    # dtype switches the compute only: params stay fp32, logits come back fp32
    m16 = nnx.eval_shape(lambda: t5.Model(cfg, dtype=jnp.bfloat16))
    nnx.update(m16, models.params_from_hf(cfg, tensors))
    assert m16.shared[...].dtype == jnp.float32
    out16 = our_logits(m16, *batch)
    assert out16.dtype == np.float32 and np.abs(out16 - ref).max() <= 0.05 * np.abs(ref).max()
    # bf16 generation (weights cast once inside the jitted loop) starts like fp32 generation
    # (decoder inputs start with the start token, so HF's first-position argmax is the first greedy token)
    gen16, _ = decode.generate_ids(m16, batch[0], batch[1], max_new_tokens=4)
    np.testing.assert_array_equal(gen16[:, 0], ref[:, 0].argmax(-1))


def test_mt5_logits_match_hf():
    torch.manual_seed(2)
    hc = transformers.MT5Config(
        vocab_size=V,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        dropout_rate=0.0,
        decoder_start_token_id=0,
    )
    hf = transformers.MT5ForConditionalGeneration(hc).eval()
    cfg = t5.Config.from_hf_config(hc.to_dict())
    assert cfg.model_type == "mt5" and not cfg.tie_word_embeddings and not cfg.scale_decoder_outputs
    model = nnx.eval_shape(lambda: t5.Model(cfg))
    nnx.update(model, models.params_from_hf(cfg, {k: v.numpy() for k, v in hf.state_dict().items()}))
    batch = padded_batch(6)
    assert np.abs(our_logits(model, *batch) - hf_logits(hf, *batch)).max() <= 1e-4


def test_sharded_forward_matches_unsharded(v10):
    """fsdp x tensor mesh over the 8 virtual devices: every logical name resolves and the numbers agree."""
    from ftcot_jax.models import sharding

    _, hf, model = v10
    batch = padded_batch(7)
    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh(2, 2, 2)
    sharded = jax.device_put(state, sharding.logical_to_sharding(state, mesh))
    q = sharded["encoder"]["blocks"][0]["self_attn"]["q"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    with jax.set_mesh(mesh):
        out = np.asarray(_forward(graphdef, sharded, *batch))
    np.testing.assert_allclose(out, hf_logits(hf, *batch), atol=1e-4, rtol=0)


@functools.partial(jax.jit, static_argnums=0)
def _forward_dropout(graphdef, state, key, ids, mask, dec, dmask):
    return nnx.merge(graphdef, state)(
        ids, attention_mask_BxL=mask, decoder_input_ids_BxT=dec, decoder_attention_mask_BxT=dmask, dropout_rng=key
    )


def test_dropout_only_with_a_key(v10):
    _, _, model = v10
    batch = padded_batch(8)
    m = nnx.eval_shape(lambda: t5.Model(dataclasses.replace(model.config, dropout_rate=0.3)))
    nnx.update(m, nnx.state(model))
    graphdef, state = nnx.split(m)
    a = np.asarray(_forward_dropout(graphdef, state, jax.random.key(0, impl="rbg"), *batch))
    b = np.asarray(_forward_dropout(graphdef, state, jax.random.key(0, impl="rbg"), *batch))
    c = np.asarray(_forward_dropout(graphdef, state, jax.random.key(1, impl="rbg"), *batch))
    plain = our_logits(model, *batch)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2 and np.abs(a - plain).max() > 1e-2


def test_sharding_rules_cover_every_t5_param():
    from jax.sharding import PartitionSpec as P

    from ftcot_jax.models import sharding

    model = nnx.eval_shape(
        lambda: t5.Model(
            t5.Config(
                vocab_size=96,
                d_model=16,
                d_kv=4,
                d_ff=32,
                num_layers=1,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
            )
        )
    )
    shardings = sharding.logical_to_sharding(nnx.state(model, nnx.Param), sharding.make_mesh(2, 2, 2))
    assert shardings["shared"].get_value().spec == P("tensor", "fsdp")
    assert shardings["lm_head"].get_value().spec == P("fsdp", "tensor")
    q = shardings["decoder"]["blocks"][0]["cross_attn"]["q"].get_value().spec
    assert q == P("fsdp", "tensor", None)


def test_relative_position_buckets_match_hf():
    from transformers.models.t5.modeling_t5 import T5Attention

    rp = np.arange(-300, 301)
    for nb, md in [(32, 128), (8, 12), (16, 20)]:
        for bidirectional in (True, False):
            ref = T5Attention._relative_position_bucket(
                torch.tensor(rp), bidirectional=bidirectional, num_buckets=nb, max_distance=md
            ).numpy()
            table = relative_position_bucket_table(bidirectional, nb, md)
            np.testing.assert_array_equal(table[np.clip(rp, -md, md) + md], ref)


def test_greedy_generation_matches_hf_generate(pair):
    _, hf, model = pair
    ids, mask, _, _ = padded_batch(1)
    # Random weights rarely emit token 1; take a token the model does emit as EOS so rows stop at
    # different steps and the loop's early exit and the pad-after-EOS rule are exercised.
    free, _ = decode.generate_ids(model, ids, mask, max_new_tokens=10)
    eos = int(free[0, 3])
    ours, done = decode.generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=eos)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=eos,
            pad_token_id=0,
            decoder_start_token_id=0,
        ).numpy()
    assert ref[:, 0].tolist() == [0, 0, 0]
    n = ref.shape[1] - 1
    np.testing.assert_array_equal(ours[:, :n], ref[:, 1:])
    assert (ours[:, n:] == 0).all()
    assert done[0] and done.tolist() == [eos in row for row in ours.tolist()]


def test_stop_check_ends_rows_between_chunks(v10):
    _, _, model = v10
    ids, mask, _, _ = padded_batch(1)  # the shapes of the greedy test: no new compile
    full, _ = decode.generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=V + 1)
    calls = []

    def stop_row0(tokens):
        calls.append(tokens.shape[1])
        return np.array([True, False, False])

    cut, finished = decode.generate_ids(
        model, ids, mask, max_new_tokens=10, eos_token_id=V + 1, stop_check=stop_row0, check_every=4
    )
    assert calls == [4, 8] and not finished.any()
    np.testing.assert_array_equal(cut[0, :4], full[0, :4])
    assert (cut[0, 4:] == 0).all()
    np.testing.assert_array_equal(cut[1:], full[1:])


def test_filler_rows_do_not_hold_the_loop_open(v10):
    _, _, model = v10
    ids, mask, _, _ = padded_batch(1)
    mask[1:] = 0  # rows 1, 2: batch filler
    first, _ = decode.generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=V + 1)
    calls = []

    def never(tokens):
        calls.append(tokens.shape[1])
        return np.zeros(3, bool)

    out, finished = decode.generate_ids(
        model, ids, mask, max_new_tokens=10, eos_token_id=int(first[0, 0]), stop_check=never, check_every=2
    )
    assert calls == [] and finished.tolist() == [True, False, False]  # row 0 hit EOS at step 1: loop over
    assert (first[1:] == 0).all() and out[0, 0] == first[0, 0] and (out[:, 1:] == 0).all()


def test_cached_decoding_equals_full_recomputation(pair):
    _, _, model = pair
    ids, mask, dec, _ = padded_batch(2)
    graphdef, state = nnx.split(model)
    full, cross = _full_and_cross(graphdef, state, ids, mask, dec)
    full = np.asarray(full)
    cache, steps = model.init_cache(3, 16), []
    for i in range(dec.shape[1]):
        logits, cache = _step(graphdef, state, dec[:, i : i + 1], i, cache, cross, mask)
        steps.append(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5, rtol=0)
    # a multi-token chunk after a prefix lands in the same cache slots
    _, cache = _step(graphdef, state, dec[:, :4], 0, model.init_cache(3, 16), cross, mask)
    chunk, _ = _step(graphdef, state, dec[:, 4:8], 4, cache, cross, mask)
    np.testing.assert_allclose(np.asarray(chunk), full[:, 4:8], atol=1e-5, rtol=0)


def test_export_round_trip_into_pytorch(pair, tmp_path):
    variant, hf, model = pair
    batch = padded_batch(3)
    tensors = models.params_to_hf(model)
    fresh = transformers.T5ForConditionalGeneration(hf_config(variant)).eval()
    if variant == "v1.0":
        missing, unexpected = fresh.load_state_dict({k: torch.tensor(v) for k, v in tensors.items()}, strict=False)
        assert not unexpected
        assert set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
        assert "lm_head.weight" not in tensors
    else:
        # The untied head must survive the way users load exports: models.save_hf -> from_pretrained.
        from ftcot_jax.models import load_dir, save_hf

        assert "lm_head.weight" in tensors and not np.array_equal(tensors["lm_head.weight"], tensors["shared.weight"])
        save_hf(model, None, tmp_path)
        fresh = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
        assert fresh.lm_head.weight.data_ptr() != fresh.shared.weight.data_ptr()
        with pytest.warns(UserWarning, match="no tokenizer files"):
            loaded, _ = load_dir(tmp_path)
        assert loaded.config == model.config
        np.testing.assert_array_equal(our_logits(loaded, *batch), our_logits(model, *batch))
    np.testing.assert_allclose(hf_logits(fresh, *batch), our_logits(model, *batch), atol=1e-4, rtol=0)
    # and back: HF names -> our params reproduce the same model
    again = nnx.eval_shape(lambda: t5.Model(model.config))
    nnx.update(again, jax.tree.map(jnp.asarray, models.params_from_hf(model.config, tensors)))
    np.testing.assert_array_equal(our_logits(again, *batch), our_logits(model, *batch))


def test_checkpoint_errors_name_the_tensor(pair):
    _, hf, model = pair
    tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        models.params_from_hf(model.config, {k: v for k, v in tensors.items() if k != name})
    bad = dict(tensors)
    bad["encoder.block.0.layer.1.DenseReluDense.wo.weight"] = np.zeros((32, 47), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wo\.weight.*\(32, 47\)"):
        models.params_from_hf(model.config, bad)
    no_shared = {k: v for k, v in tensors.items() if "embed_tokens" not in k and k != "shared.weight"}
    with pytest.raises(KeyError, match="shared.weight"):
        models.params_from_hf(model.config, no_shared)


def test_config_from_and_to_hf():
    flan_v4 = {
        "model_type": "t5",
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 48,
        "num_layers": 2,
        "num_heads": 4,
        "vocab_size": V,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
    }
    cfg = t5.Config.from_hf_config(flan_v4)
    assert not cfg.tie_word_embeddings and not cfg.scale_decoder_outputs and cfg.num_decoder_layers == 2
    assert cfg.is_encoder_decoder and cfg.activation == "gelu_new"
    assert t5.Config.from_hf_config(cfg.to_hf_config()) == cfg
    hf = transformers.T5Config(**{k: v for k, v in cfg.to_hf_config().items() if k != "model_type"})
    assert hf.scale_decoder_outputs is False and hf.feed_forward_proj == "gated-gelu"
    v10 = t5.Config.from_hf_config({"model_type": "t5", "vocab_size": V})
    assert v10.tie_word_embeddings and v10.scale_decoder_outputs and v10.feed_forward_proj == "relu"
    labels = np.array([[5, 6, 1, -100], [7, 1, -100, -100]])
    hf_model = transformers.T5ForConditionalGeneration(hf_config("v1.0", 1, 1))
    np.testing.assert_array_equal(
        np.asarray(t5.shift_right(jnp.asarray(labels), 0, 0)), hf_model._shift_right(torch.tensor(labels)).numpy()
    )
    with pytest.raises(ValueError, match="umt5"):
        t5.Config.from_hf_config({"model_type": "umt5"})
    with pytest.raises(ValueError, match="feed_forward_proj 'gated-swish'"):
        t5.Config.from_hf_config({"model_type": "t5", "feed_forward_proj": "gated-swish"})
    with pytest.raises(ValueError, match="float16"):
        nnx.eval_shape(lambda: t5.Model(v10, dtype=jnp.float16))
    with pytest.raises(ValueError, match="decoder_input_ids_BxT"):
        nnx.eval_shape(lambda: t5.Model(t5.Config(vocab_size=V, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2)))(
            jnp.ones((1, 3), jnp.int32)
        )


def test_params_carry_logical_axis_names():
    model = nnx.eval_shape(
        lambda: t5.Model(
            t5.Config(
                vocab_size=V,
                d_model=8,
                d_kv=2,
                d_ff=8,
                num_layers=1,
                num_heads=2,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
            )
        )
    )
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves
    for v in leaves:
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim


def test_text_generate_keeps_order_and_matches_token_level(v10):
    _, _, model = v10
    tok = ModuloLetterTokenizer(V)
    # all prompts fit the 16-token bucket, so every call below reuses one compiled (2 x 16) shape
    prompts = ["a longer prompt", "hi", "medium prompt"]
    gens = decode.generate(model, tok, prompts, max_new_tokens=6, batch_size=2)
    for p, g in zip(prompts, gens, strict=True):
        ids = np.zeros((2, 16), np.int32)
        mask = np.zeros((2, 16), np.int32)
        enc = tok(p)["input_ids"]
        ids[0, : len(enc)], mask[0, : len(enc)] = enc, 1  # row 1: filler
        ref, _ = decode.generate_ids(model, ids, mask, max_new_tokens=6)
        row = ref[0].tolist()
        row = row[: row.index(1)] if 1 in row else row
        assert g.token_ids == row and g.text == tok.decode(row)
        assert g.finish_reason == ("stop" if len(row) < 6 else "length")
    # the same call again (same compiled shapes) gives the same generations
    assert decode.generate(model, tok, prompts, max_new_tokens=6, batch_size=2) == gens
    # a stop string cuts the text and stops there
    first = gens[0]
    stop = first.text[2:4]
    cut = decode.generate(model, tok, prompts[:2], max_new_tokens=6, batch_size=2, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == first.text[: first.text.find(stop)]
    assert len(cut.token_ids) <= 4


def test_sampling_is_keyed_and_top_k_1_is_greedy(v10):
    _, _, model = v10
    ids, mask, _, _ = padded_batch(4)
    greedy, _ = decode.generate_ids(model, ids, mask, max_new_tokens=5)
    k1, _ = decode.generate_ids(model, ids, mask, max_new_tokens=5, temperature=0.7, top_k=1, rng=jax.random.key(0))
    np.testing.assert_array_equal(k1, greedy)
    a, _ = decode.generate_ids(model, ids, mask, max_new_tokens=5, temperature=1.5, top_p=0.9, rng=jax.random.key(3))
    b, _ = decode.generate_ids(model, ids, mask, max_new_tokens=5, temperature=1.5, top_p=0.9, rng=jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="PRNG key"):
        decode.generate_ids(model, ids, mask, max_new_tokens=5, temperature=1.0)
