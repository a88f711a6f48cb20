"""The decode loop as GPUs/TPUs run it (`models.cpu_xla.decode_chunk`): fixed-length chunks, no while loop whose
trip count depends on data (XLA:GPU copies such a loop's predicate to the host every iteration), and the same
tokens as the while loop CPU runs, for both model kinds, greedy and sampled, with EOS, stop checks, per-row
budgets and batch filler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftcot_jax import decode, models
from ftcot_jax.decode import causal, sampling, seq2seq
from ftcot_jax.models import cpu_xla
from tests.helpers.models import TINY_GPT2, TINY_LLAMA, TINY_T5, padded_batch
from tests.helpers.toy_tokenizers import LetterTokenizer

CHUNK = cpu_xla.DECODE_CHUNK


def _chunk_call(cfg, chunk, greedy):
    """(the jitted chunk function, its arguments) for one batch of a tiny model of `cfg`'s kind."""
    model = models.from_config(cfg, seed=5)
    graphdef, state = nnx.split(model)
    ids, mask = padded_batch(cfg["vocab_size"], lengths=(4, 3), seed=2)
    s = sampling.make_sampling(jax.random.key(0), 0.0 if greedy else 1.0, 0, 1.0, [2], 0)
    until = jnp.int32(9)
    if cfg["model_type"] == "t5":
        mask = jnp.asarray(mask, jnp.int32)
        loop, cross_kv = seq2seq._start(
            graphdef, state, jnp.asarray(ids, jnp.int32), mask, jnp.zeros(2, bool), 0, 0, new_bucket=16
        )
        fn = functools.partial(seq2seq._continue, graphdef, greedy=greedy, chunk=chunk)
        return fn, (state, loop, cross_kv, mask, until, s)
    left, lmask = causal.left_align(ids, mask, 0, 16)
    loop = causal._prefill(
        graphdef, state, jnp.asarray(left), jnp.asarray(lmask), jnp.zeros(2, bool), s, new_bucket=16, greedy=greedy
    )
    fn = functools.partial(causal.loop_fn(None), graphdef, greedy=greedy, chunk=chunk)
    return fn, (state, loop, until, s)


def _primitives(jaxpr) -> set[str]:
    """Every primitive in a jaxpr and in the jaxprs nested in its equations (jit, scan, cond, while)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else [p]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    names |= _primitives(sub)
    return names


@pytest.mark.parametrize("cfg", [TINY_GPT2, TINY_T5], ids=["causal", "seq2seq"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_chunk_is_a_fixed_trip_loop(cfg, greedy):
    """Off CPU one decode call is a scan of CHUNK steps: no `while` primitive anywhere in it, and XLA compiles
    its one loop with a known trip count (what lets XLA:GPU run it without reading the predicate back). The
    CPU form is the data-dependent while loop, without a known trip count."""
    assert cpu_xla.decode_chunk("gpu") == cpu_xla.decode_chunk("tpu") == CHUNK and cpu_xla.decode_chunk("cpu") is None
    for chunk in (CHUNK, None):
        fn, args = _chunk_call(cfg, chunk, greedy)
        prims = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
        assert ("while" in prims) == (chunk is None) and ("scan" in prims) == (chunk is not None)
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        loops = [line for line in hlo.splitlines() if " while(" in line]  # sampling adds threefry's fixed loops
        unknown = [line for line in loops if '"known_trip_count"' not in line]
        assert len(unknown) == (chunk is None)
        assert any(f'"known_trip_count":{{"n":"{CHUNK}"}}' in line for line in loops) == (chunk is not None)


def _runs(model, ids, mask, **kw):
    """generate_ids with every combination the host loop handles: plain, EOS ending rows early, a stop check
    every 4 steps ending row 0, and batch filler."""
    out = [decode.generate_ids(model, ids, mask, eos_token_id=[], **kw)]
    eos = int(out[0][0][1, 2])  # row 1 ends at its third token (or earlier)
    out.append(decode.generate_ids(model, ids, mask, eos_token_id=[eos], **kw))
    stop_row0 = lambda t: np.arange(len(t)) == 0  # noqa: E731
    out.append(decode.generate_ids(model, ids, mask, eos_token_id=[eos], stop_check=stop_row0, check_every=4, **kw))
    filler = np.arange(len(ids)) > 0
    out.append(decode.generate_ids(model, ids, mask, eos_token_id=[eos], filler_B=filler, **kw))
    return out


@pytest.mark.parametrize("cfg", [TINY_GPT2, TINY_LLAMA, TINY_T5], ids=["gpt2", "llama", "t5"])
def test_fixed_chunks_give_the_while_loops_tokens(monkeypatch, cfg):
    model = models.from_config(cfg, seed=3)
    ids, mask = padded_batch(cfg["vocab_size"], lengths=(6, 3, 5), seed=4)
    settings = [dict(max_new_tokens=11), dict(max_new_tokens=11, temperature=1.3, top_k=20, rng=jax.random.key(3))]
    want = [_runs(model, ids, mask, **kw) for kw in settings]
    for chunk in (CHUNK, 3):
        monkeypatch.setattr(cpu_xla, "decode_chunk", lambda platform, chunk=chunk: chunk)
        for kw, expected in zip(settings, want, strict=True):
            for (tokens, finished), (t0, f0) in zip(_runs(model, ids, mask, **kw), expected, strict=True):
                np.testing.assert_array_equal(tokens, t0)
                np.testing.assert_array_equal(finished, f0)


def test_fixed_chunks_text_level_stop_strings_and_budgets(monkeypatch, letter_gpt2):
    tok = LetterTokenizer()
    prompts = ["hello world", "a", "the quick fox", "abc"]
    free = decode.generate(letter_gpt2, tok, prompts, max_new_tokens=12, batch_size=4)
    stops = [[g.text[2:4]] if len(g.text) >= 4 else [] for g in free]
    kw = dict(max_new_tokens=[12, 5, 9, 12], batch_size=4, stop=stops)
    want = decode.generate(letter_gpt2, tok, prompts, **kw)
    sampled = dict(kw, temperature=1.0, rng=jax.random.key(1))
    want_sampled = decode.generate(letter_gpt2, tok, prompts, **sampled)
    monkeypatch.setattr(cpu_xla, "decode_chunk", lambda platform: CHUNK)
    assert decode.generate(letter_gpt2, tok, prompts, **kw) == want
    assert decode.generate(letter_gpt2, tok, prompts, **sampled) == want_sampled


def test_fixed_chunks_compile_once_and_stop_at_the_first_chunk_where_every_row_is_done(monkeypatch):
    model = models.from_config(TINY_GPT2, seed=3)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(6,), seed=4)  # one row: the default options
    monkeypatch.setattr(cpu_xla, "decode_chunk", lambda platform: 3)
    calls = []
    real = causal.loop_fn
    monkeypatch.setattr(causal, "loop_fn", lambda options: (calls.append(options), real(options))[1])
    full, _ = decode.generate_ids(model, ids, mask, max_new_tokens=11, eos_token_id=[])
    assert len(calls) == 4  # steps 1..10 after the prefill: 3 + 3 + 3 + 1 (two masked)
    n = real(None)._cache_size()
    for n_new in (9, 13, 16):  # other remainders of the same 16-token bucket: no new compile
        decode.generate_ids(model, ids, mask, max_new_tokens=n_new, eos_token_id=[])
    assert real(None)._cache_size() == n
    calls.clear()
    out, finished = decode.generate_ids(model, ids, mask, max_new_tokens=11, eos_token_id=[int(full[0, 2])])
    assert finished.all() and len(calls) == 1  # EOS by step 2: the host stops after the first chunk
    assert (out[0, : list(full[0]).index(full[0, 2]) + 1] == full[0, : list(full[0]).index(full[0, 2]) + 1]).all()
