"""Attention on TPU (models/tpu_attention.py): the splash kernel, run here in Pallas's interpreter, equals ours
forward and backward in fp32 (padding on either side, causal rows, grouped-query heads, a mesh, the packed
layout); what keeps the XLA form; the shard_map specs from the sharding rules; and the kernel's custom call in a
train step compiled for a TPU slice, none in the CPU program."""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from ftcot_jax.models import layers, llama, tpu_attention
from ftcot_jax.models.layers import _masked_softmax_attention, attention_on, library_attention, prepare_inputs
from ftcot_jax.models.sharding import make_mesh
from ftcot_jax.train import batches, head_loss
from tests.helpers.models import max_tree_diff

KERNEL_CALL = "tpu_custom_call"  # the custom-call target of a Pallas TPU (Mosaic) kernel


@pytest.fixture
def interpreted(monkeypatch):
    """The splash kernel in Pallas's interpreter (the TPU interpret mode of `force_tpu_interpret_mode` does not
    take its vmapped grid in this jax); `attention_on("tpu", ...)` then runs on CPU. Returns the calls made."""
    calls = []
    kernel = tpu_attention.splash_attention

    def interpret(*args, **kwargs):
        calls.append(args[0].shape)
        return kernel(*args, **kwargs, interpret=True)

    monkeypatch.setattr(tpu_attention, "splash_attention", interpret)
    return calls


def _qkv(B, T, H, G, K=16, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, K)),
        jax.random.normal(kk, (B, G, T, K)),
        jax.random.normal(kv, (B, G, T, K)),
    )


def _rows(T, spans):
    """A B x T keys' mask with real tokens at [start, stop) per row (left padding: start > 0)."""
    m = np.zeros((len(spans), T), np.int32)
    for r, (a, b) in enumerate(spans):
        m[r, a:b] = 1
    return m


@pytest.mark.parametrize(
    "T, H, G, spans, mesh",
    [
        # right-padded training rows, a left-padded prompt, an all-padding row; 200 -> two 128-blocks
        (200, 4, 2, [(0, 200), (0, 131), (57, 200), (0, 0)], None),
        (128, 2, 2, [(0, 128), (0, 128)], None),  # plain causal rows, one kv head per query head
        (128, 4, 2, [(0, 128), (0, 90), (30, 128), (0, 1)], (2, 1, 2)),  # per device: 2 rows x (2 heads, 1 kv head)
    ],
    ids=["gqa-padding", "mha-causal", "mesh"],
)
def test_splash_equals_ours_forward_and_backward(interpreted, T, H, G, spans, mesh):
    kv_mask = _rows(T, spans)
    B = len(spans)
    mask_BxTxS, _ = prepare_inputs(jnp.zeros((B, T), jnp.int32), jnp.asarray(kv_mask), None, None, None)
    real_BxT = kv_mask > 0
    w_BxTxHxK = jax.random.normal(jax.random.key(1), (B, T, H, 16)) * real_BxT[..., None, None]  # real rows only

    def loss(form):
        def f(q, k, v):
            out = form(q, k, v, mask_BxTxS, scale=0.25, dtype=jnp.float32)
            return (out * w_BxTxHxK).sum(), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    q, k, v = _qkv(B, T, H, G)
    (l0, out0), g0 = loss(_masked_softmax_attention)(q, k, v)
    if mesh is None:
        (l1, out1), g1 = loss(functools.partial(attention_on, "tpu"))(q, k, v)
    else:
        with jax.set_mesh(make_mesh(*mesh)):
            (l1, out1), g1 = loss(functools.partial(attention_on, "tpu"))(q, k, v)
    assert interpreted and out1.shape == out0.shape
    np.testing.assert_allclose(np.asarray(out1)[real_BxT], np.asarray(out0)[real_BxT], atol=1e-5, rtol=1e-5)
    assert np.isfinite(np.asarray(out1)).all()  # padding rows too (they are not read, but must not poison grads)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(g1, g0, strict=True):  # every position: padding gets no gradient in either form
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_short_rows_and_decoding_with_a_cache_keep_the_xla_form(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("the splash kernel was called")

    monkeypatch.setattr(tpu_attention, "splash_attention", no_kernel)
    B, T, S = 2, 7, 12
    short, _ = prepare_inputs(jnp.zeros((B, T), jnp.int32), jnp.ones((B, T), jnp.int32), None, None, None)
    prompt = jnp.asarray(_rows(S, [(0, S), (4, S)]))
    step, _ = prepare_inputs(jnp.zeros((B, 1), jnp.int32), prompt, None, [{}], S - 1)  # one token vs S slots
    prefill, _ = prepare_inputs(jnp.zeros((B, T), jnp.int32), prompt, None, [{}], 0)  # T prompt tokens vs S slots
    for mask_BxTxS in (short, step, prefill):
        q, k, v = _qkv(B, mask_BxTxS.shape[1], 4, 2)
        k, v = k[:, :, :1].repeat(mask_BxTxS.shape[2], 2), v[:, :, :1].repeat(mask_BxTxS.shape[2], 2)

        @jax.jit
        def both(*args):
            got = attention_on("tpu", *args, scale=0.25, dtype=jnp.float32)
            return got, library_attention(*args, scale=0.25, dtype=jnp.float32, implementation="xla")

        got, want = both(q, k, v, mask_BxTxS)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not tpu_attention.supports(128, 256) and not tpu_attention.supports(64, 64)
    assert tpu_attention.supports(128, 128) and tpu_attention.supports(200, 200)


ROWS = ("data", "fsdp")


@pytest.mark.parametrize(
    "mesh, B, H, G, q_spec, kv_spec",
    [
        ({"data": 2, "fsdp": 2, "tensor": 2}, 8, 4, 2, P(ROWS, None, "tensor", None), P(ROWS, "tensor", None, None)),
        ({"data": 2, "fsdp": 1, "tensor": 2}, 8, 6, 1, P("data", None, None, None), P("data", None, None, None)),
        ({"data": 4, "fsdp": 1, "tensor": 1}, 6, 4, 4, P(None, None, None, None), P(None, None, None, None)),
    ],
    ids=["rows-and-heads", "one-kv-head-stays-whole", "rows-not-divisible"],
)
def test_shard_map_specs_follow_the_sharding_rules(mesh, B, H, G, q_spec, kv_spec):
    q, kv, seg = tpu_attention._specs((B, 128, H, 16), (B, G, 128, 16), mesh)
    assert (q, kv) == (q_spec, kv_spec) and seg == P(q_spec[0], None)


def _lowered(f, *args, platform):
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("grad", [False, True])
def test_lowering_for_tpu_uses_the_kernel_unless_a_form_it_lacks(grad):
    B, T, H, G = 2, 128, 4, 2
    kv_mask = jnp.asarray(_rows(T, [(0, T), (0, 50)]))
    mask_BxTxS, _ = prepare_inputs(jnp.zeros((B, T), jnp.int32), kv_mask, None, None, None)

    for dtype, platform, rng, want in (
        (jnp.bfloat16, "tpu", None, True),
        (jnp.float32, "tpu", None, True),
        (jnp.bfloat16, "cpu", None, False),
        (jnp.bfloat16, "cuda", None, False),
        (jnp.bfloat16, "tpu", jax.random.key(0), False),  # attention dropout: ours everywhere
    ):

        def f(q, k, v, dtype=dtype, rng=rng):
            out = layers.dot_attention(q, k, v, mask_BxTxS, 0.25, dtype, 0.1, rng)
            return out.astype(jnp.float32).sum()

        text = _lowered(jax.grad(f, argnums=(0, 1, 2)) if grad else f, *_qkv(B, T, H, G), platform=platform)
        assert (KERNEL_CALL in text) == want, (dtype, platform, rng)


LLAMA = llama.Config(
    vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
)  # fmt: skip


@pytest.mark.slow
def test_packed_llama_with_the_kernel_equals_padded_ours(interpreted, monkeypatch):
    """The packed layout (attention on the unpacked [B, L] rows, tokens after a row's last label zeros there):
    Llama's loss and gradients with the kernel equal the padded batch's with ours."""
    B, L, V = 4, 128, 60
    rng = np.random.default_rng(0)
    ids = rng.integers(1, V, (B, L)).astype(np.int32)
    mask, loss = np.zeros((B, L), np.int32), np.zeros((B, L), np.float32)
    for r, n in enumerate((128, 70, 9, 100)):
        mask[r, :n], ids[r, n:] = 1, 0
        loss[r, n // 2 : n - 1 - r] = 1
    targets = np.concatenate([ids[:, 1:], np.zeros((B, 1), np.int32)], axis=1)
    index, inverse = batches.packing_indices(mask[None], loss[None], groups=2, multiple=8)
    assert index.shape[-1] < inverse.shape[-1]  # really packed
    graphdef, params = nnx.split(llama.Model(LLAMA, rngs=nnx.Rngs(0)))
    a = {k: jnp.asarray(v) for k, v in dict(ids=ids, mask=mask, targets=targets, loss=loss).items()}

    def padded(params):
        m = nnx.merge(graphdef, params)
        x, _ = m.features(a["ids"], attention_mask_BxL=a["mask"])
        return head_loss.label_cross_entropy(x, m.head_VxD(), a["targets"], a["loss"], groups=2, chunk=64)[0]

    def packed(params):
        m = nnx.merge(graphdef, params)
        p = layers.Packing(jnp.asarray(index[0]), jnp.asarray(inverse[0]), B, L)
        x, _ = m.features(a["ids"], attention_mask_BxL=a["mask"], packing=p)
        return head_loss.label_cross_entropy(
            x, m.head_VxD(), p.pack(a["targets"]), p.pack(a["loss"]), groups=2, chunk=64
        )[0]

    l0, g0 = jax.jit(jax.value_and_grad(padded))(params)
    choose = layers.attention_implementation

    def splash_on_cpu(platform, *args, **kwargs):
        return "splash" if platform == "cpu" else choose(platform, *args, **kwargs)

    monkeypatch.setattr(layers, "attention_implementation", splash_on_cpu)
    l1, g1 = jax.jit(jax.value_and_grad(packed))(params)
    assert interpreted  # the CPU branch ran the kernel
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    assert max_tree_diff(g0, g1) <= 1e-5


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install -e '.[tpu]')"
)


@needs_libtpu
@pytest.mark.slow
def test_train_step_compiled_for_a_v5e_slice_runs_the_kernel_and_the_cpu_one_does_not():
    from ftcot_jax.aot.compile import compile_config
    from ftcot_jax.aot.topology import parse
    from tests.unit.test_aot import TINY, _cfg

    cfg = _cfg(TINY["llama"], max_length=128, mesh={"data": 2, "tensor": 2, "num_devices": 4})
    tpu = compile_config(cfg, parse("v5e:2x2"), decode=False, keep_hlo=True).programs[0]
    cpu = compile_config(cfg, None, decode=False, keep_hlo=True).programs[0]
    assert tpu.fits and cpu.fits
    # forward, and the backward's dq and dkv kernels, of its one layer
    assert tpu.hlo_text.count(f'custom_call_target="{KERNEL_CALL}"') == 3
    assert KERNEL_CALL not in cpu.hlo_text
