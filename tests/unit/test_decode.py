"""Decoding: greedy tokens identical to HF generate on left-padded batches; cached decoding equals full
recomputation; sampling reproducible per key; bucketing bounds compiles; text-level stop handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftcot_jax import decode, models
from ftcot_jax.decode import causal, seq2seq, text
from ftcot_jax.models import cpu_xla
from tests.helpers.models import TINY, TINY_GPT2, TINY_LLAMA, TINY_T5, forward, padded_batch
from tests.helpers.toy_tokenizers import LetterTokenizer

N_NEW = 12


def hf_greedy(tm, ids, mask, n_new, eos):
    import torch

    with torch.no_grad():
        out = tm.generate(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=n_new,
            min_new_tokens=n_new if eos is None else 0,
            pad_token_id=0,
            eos_token_id=eos,
        )
    return out[:, ids.shape[1] :].numpy()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_matches_hf_generate_left_padded(torch_pair, family):
    tm, ours = torch_pair(family)
    ids, mask = padded_batch(TINY[family]["vocab_size"], lengths=(9, 5, 2))
    # no EOS: full length comparison
    want = hf_greedy(tm, ids, mask, N_NEW, eos=None)
    got, done = decode.generate_ids(ours, ids, mask, max_new_tokens=N_NEW, eos_token_id=[])
    np.testing.assert_array_equal(got, want)
    assert not done.any()
    # with an EOS that the model emits: rows stop there and are padded afterwards, like HF
    eos = int(want[0, 3])
    want = hf_greedy(tm, ids, mask, N_NEW, eos=eos)
    got, done = decode.generate_ids(ours, ids, mask, max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=0)
    want = np.pad(want, ((0, 0), (0, N_NEW - want.shape[1])))
    np.testing.assert_array_equal(got, want)
    assert done[0]


def test_cached_decoding_equals_full_recomputation():
    model = models.from_config(TINY_LLAMA, seed=3)
    ids, mask = padded_batch(TINY_LLAMA["vocab_size"], lengths=(6, 3), seed=1)
    n, P = 8, ids.shape[1]
    got, _ = decode.generate_ids(model, ids, mask, max_new_tokens=n, eos_token_id=[])
    # No cache: re-run the whole sequence each step (one fixed-size buffer; unfilled slots masked, and being
    # later in the sequence they cannot affect earlier positions) and take the argmax.
    seq = np.concatenate([ids, np.zeros((2, n), ids.dtype)], 1)
    m = np.concatenate([mask, np.zeros((2, n), mask.dtype)], 1)
    for t in range(n):
        nxt = np.asarray(forward(model, seq, m)[:, P + t - 1].argmax(-1))
        np.testing.assert_array_equal(got[:, t], nxt, err_msg=f"step {t}")
        seq[:, P + t], m[:, P + t] = nxt, 1


def test_right_padding_is_left_aligned():
    model = models.from_config(TINY_GPT2, seed=2)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(5, 2), seed=4)
    left, _ = decode.generate_ids(model, ids, mask, max_new_tokens=4, eos_token_id=[])
    r_ids, r_mask = np.zeros_like(ids), np.zeros_like(mask)
    for r in range(len(ids)):
        real = ids[r][mask[r] > 0]
        r_ids[r, : len(real)], r_mask[r, : len(real)] = real, 1
    right, _ = decode.generate_ids(model, r_ids, r_mask, max_new_tokens=4, eos_token_id=[])
    np.testing.assert_array_equal(left, right)


def test_sampling_reproducible_and_filters():
    model = models.from_config(TINY_GPT2, seed=5)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(4, 4, 4, 4), seed=2)
    kw = dict(max_new_tokens=10, temperature=1.5, eos_token_id=[])
    a, _ = decode.generate_ids(model, ids, mask, rng=jax.random.key(7), **kw)
    b, _ = decode.generate_ids(model, ids, mask, rng=jax.random.key(7), **kw)
    c, _ = decode.generate_ids(model, ids, mask, rng=jax.random.key(8), **kw)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy, _ = decode.generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=[])
    top1, _ = decode.generate_ids(model, ids, mask, rng=jax.random.key(9), **dict(kw, top_k=1))
    np.testing.assert_array_equal(top1, greedy)
    tiny_p, _ = decode.generate_ids(model, ids, mask, rng=jax.random.key(9), **dict(kw, top_p=1e-6))
    np.testing.assert_array_equal(tiny_p, greedy)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        decode.generate_ids(model, ids, mask, max_new_tokens=2, temperature=1.0)


def test_sampled_tokens_do_not_depend_on_chunking():
    """Token t is drawn with fold_in(rng, t) on both kinds: returning to the host between chunks (as stop
    checks do) changes nothing."""
    never = lambda tokens: np.zeros(len(tokens), bool)
    for cfg in (TINY_GPT2, TINY_T5):
        model = models.from_config(cfg, seed=5)
        ids, mask = padded_batch(cfg["vocab_size"], lengths=(4, 3), seed=2)
        kw = dict(max_new_tokens=10, temperature=1.5, eos_token_id=[], rng=jax.random.key(7))
        whole, _ = decode.generate_ids(model, ids, mask, **kw)
        chunked, _ = decode.generate_ids(model, ids, mask, stop_check=never, check_every=3, **kw)
        np.testing.assert_array_equal(chunked, whole)


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda k, p: np.isfinite(np.asarray(decode.filter_logits(logits, 1.0, k, p)))[0].tolist()
    assert kept(2, 1.0) == [True, True, False, False]
    assert kept(0, 0.7) == [True, True, False, False]
    assert kept(0, 0.5) == [True, False, False, False]
    assert kept(0, 0.81) == [True, True, True, False]


def test_generate_text_stop_strings_order_and_bounded_compiles(letter_gpt2):
    model = letter_gpt2
    tok = LetterTokenizer()
    prompts = ["hello world", "a", "the quick fox", "abc"]  # all in the 16-token prompt bucket
    gens = decode.generate(model, tok, prompts, max_new_tokens=10, batch_size=2)
    for p, g in zip(prompts, gens, strict=True):  # order kept: each equals a single-prompt run
        single = decode.generate(model, tok, [p], max_new_tokens=10, batch_size=1)[0]
        assert g == single
        assert g.finish_reason in ("stop", "length") and len(g.token_ids) <= 10
    g = gens[2]
    if len(g.text) >= 3:  # stop string = a piece of the generated text: cut before it
        s = g.text[1:3]
        cut = decode.generate(model, tok, [prompts[2]], max_new_tokens=10, batch_size=1, stop=[s])[0]
        assert cut.text == g.text[: g.text.find(s)] and cut.finish_reason == "stop"
    loops = (causal._prefill, causal.loop_fn(None), causal.loop_fn(cpu_xla.FEW_ROWS_OPTIONS))
    sizes = lambda: tuple(f._cache_size() for f in loops)
    n = sizes()
    decode.generate(model, tok, ["xy", "hello there"], max_new_tokens=9, batch_size=2)  # same buckets
    assert sizes() == n


def test_cpu_few_rows_loop_same_tokens_and_falls_back_when_the_option_is_unknown(monkeypatch):
    model = models.from_config(TINY_GPT2, seed=3)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(6, 3, 4, 5), seed=4)
    kw = dict(max_new_tokens=12, eos_token_id=[], pad_token_id=0)
    calls = []
    real_loop_fn = causal.loop_fn
    monkeypatch.setattr(causal, "loop_fn", lambda options: (calls.append(options), real_loop_fn(options))[1])
    few, _ = decode.generate_ids(model, ids, mask, **kw)  # 4 rows on CPU: the Eigen-dot loop
    assert calls == [cpu_xla.FEW_ROWS_OPTIONS]
    assert cpu_xla.loop_compiler_options(4, "gpu") is None and cpu_xla.loop_compiler_options(1, "cpu") is None
    monkeypatch.setattr(cpu_xla, "CPU_FEW_ROWS", (0, 0))
    default, _ = decode.generate_ids(model, ids, mask, **kw)
    assert calls[1:] == [None]
    np.testing.assert_array_equal(few, default)
    # A jaxlib without the option: the compile fails before anything runs, the default loop takes over, and
    # the rejected option set is not tried again.
    monkeypatch.setattr(cpu_xla, "CPU_FEW_ROWS", (2, 16))
    monkeypatch.setattr(cpu_xla, "FEW_ROWS_OPTIONS", {"xla_cpu_no_such_option": ""})
    monkeypatch.setattr(cpu_xla, "_rejected", set())
    again, _ = decode.generate_ids(model, ids, mask, **kw)
    np.testing.assert_array_equal(again, default)
    assert calls[2:] == [{"xla_cpu_no_such_option": ""}, None]
    assert cpu_xla.loop_compiler_options(4, "cpu") is None


def test_stop_check_ends_rows_between_chunks_and_ends_the_loop():
    model = models.from_config(TINY_GPT2, seed=1)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(6, 3, 4), seed=2)
    kw = dict(max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    full, _ = decode.generate_ids(model, ids, mask, **kw)
    calls = []

    def stop_row0(tokens):
        calls.append(tokens.shape[1])
        return np.array([True, False, False])

    cut, finished = decode.generate_ids(model, ids, mask, stop_check=stop_row0, check_every=4, **kw)
    assert calls == [4, 8] and not finished.any()
    np.testing.assert_array_equal(cut[0, :4], full[0, :4])
    assert (cut[0, 4:] == 0).all()  # stopped rows emit padding from the check on
    np.testing.assert_array_equal(cut[1:], full[1:])

    calls.clear()
    stop_all = lambda tokens: calls.append(tokens.shape[1]) or np.ones(3, bool)  # noqa: E731
    cut, _ = decode.generate_ids(model, ids, mask, stop_check=stop_all, check_every=4, **kw)
    assert calls == [4]  # every row stopped: no further chunk runs
    np.testing.assert_array_equal(cut[:, :4], full[:, :4])
    assert (cut[:, 4:] == 0).all()


def test_filler_rows_emit_padding_and_do_not_hold_the_loop_open():
    model = models.from_config(TINY_GPT2, seed=1)
    ids, mask = padded_batch(TINY_GPT2["vocab_size"], lengths=(6, 3, 4), seed=2)
    first, _ = decode.generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    calls = []

    def never(tokens):
        calls.append(tokens.shape[1])
        return np.zeros(3, bool)

    # row 0's first token is its EOS: with rows 1, 2 as filler the loop is over after the prefill
    out, finished = decode.generate_ids(
        model,
        ids,
        mask,
        max_new_tokens=10,
        eos_token_id=[int(first[0, 0])],
        pad_token_id=0,
        stop_check=never,
        check_every=2,
        filler_B=[False, True, True],
    )
    assert calls == [] and finished.tolist() == [True, False, False]
    assert out[0, 0] == first[0, 0] and (out[0, 1:] == 0).all() and (out[1:] == 0).all()


def test_generate_stops_at_a_stop_string_without_running_to_max_new_tokens(monkeypatch, letter_gpt2):
    model = letter_gpt2
    tok = LetterTokenizer()
    free = decode.generate(model, tok, ["hello world"], max_new_tokens=40, batch_size=1)[0]
    if len(free.text) < 4 or free.finish_reason != "length":
        pytest.skip("this random model ends too early for the test")
    seen = []
    real = text.stop_string_check(tok, [[free.text[1:3]]], [tok.eos_token_id])

    def spy(tokens):
        seen.append(tokens.shape[1])
        return real(tokens)

    monkeypatch.setattr(text, "stop_string_check", lambda *a: spy)
    cut = decode.generate(model, tok, ["hello world"], max_new_tokens=40, batch_size=1, stop=[free.text[1:3]])[0]
    assert cut.text == free.text[: free.text.find(free.text[1:3])] and cut.finish_reason == "stop"
    assert seen == [16]  # the string shows up in the first 16 tokens: one check, then the loop ends


def test_per_prompt_budgets_and_stops_equal_single_runs_and_end_the_loop_early(monkeypatch, letter_gpt2):
    """What the server relies on: one call with each prompt's own max_new_tokens and stop strings gives
    each prompt what a call of its own gives, and ends once every row is done, not at the largest budget."""
    model = letter_gpt2
    tok = LetterTokenizer()
    prompts = ["hello world", "abc", "the quick fox"]
    free = decode.generate(model, tok, prompts, max_new_tokens=40, batch_size=4)
    long_rows = [i for i, g in enumerate(free) if g.finish_reason == "length" and len(g.text) >= 20]
    assert long_rows, [g.text for g in free]  # seed chosen so that some row runs the whole budget
    r = long_rows[0]
    budgets = [3, 7, 5]
    budgets[r] = 40
    stops = [[], ["zz"], []]
    stops[r] = [free[r].text[8:10]]  # row r meets its stop string after ~10 tokens
    want = [
        decode.generate(model, tok, [p], max_new_tokens=b, batch_size=1, stop=s)[0]
        for p, b, s in zip(prompts, budgets, stops, strict=True)
    ]
    assert want[r].finish_reason == "stop" and len(want[r].token_ids) < 16
    checked = []
    real_check = text.stop_string_check

    def spy(*a):
        check = real_check(*a)
        return lambda tokens: (checked.append(tokens.shape[1]), check(tokens))[1]

    monkeypatch.setattr(text, "stop_string_check", spy)
    got = decode.generate(model, tok, prompts, max_new_tokens=budgets, batch_size=4, stop=stops)
    assert got == want
    assert checked == [16]  # every row done after the first check: 16 of 40 steps decoded
    with pytest.raises(ValueError, match="got 2 values for 3 prompts"):
        decode.generate(model, tok, prompts, max_new_tokens=[3, 4], batch_size=4)
    assert decode.row_settings(2, 5, "ab") == ([5, 5], [["ab"], ["ab"]])  # one string: not its characters
    with pytest.raises(ValueError, match="one list of strings per prompt"):
        decode.generate(model, tok, prompts, max_new_tokens=4, batch_size=4, stop=[["a"], ["b"]])


def test_per_prompt_budgets_on_the_t5_path(tiny_t5):
    model = tiny_t5
    tok = LetterTokenizer()
    prompts, budgets = ["hello world", "abc", "the quick fox"], [3, 9, 5]
    want = [
        decode.generate(model, tok, [p], max_new_tokens=b, batch_size=1)[0]
        for p, b in zip(prompts, budgets, strict=True)
    ]
    got = decode.generate(
        model, tok, prompts, max_new_tokens=budgets, batch_size=4, stop=[[], ["zz"], []], fill_batch=True
    )
    assert got == want and [len(g.token_ids) for g in got] == budgets  # this random T5 never emits EOS


def test_fill_batch_keeps_one_batch_shape(monkeypatch, letter_gpt2):
    model = letter_gpt2
    tok = LetterTokenizer()
    shapes = []
    real = text.generate_ids
    monkeypatch.setattr(
        text, "generate_ids", lambda m, ids, *a, **k: (shapes.append(ids.shape[0]), real(m, ids, *a, **k))[1]
    )
    one = decode.generate(model, tok, ["abc"], max_new_tokens=5, batch_size=8, fill_batch=True)
    three = decode.generate(model, tok, ["abc", "hello", "fox"], max_new_tokens=5, batch_size=8, fill_batch=True)
    plain = decode.generate(model, tok, ["abc"], max_new_tokens=5, batch_size=8)
    assert shapes == [8, 8, 1] and one == plain and three[0] == one[0]


def test_generate_under_a_mesh_with_sharded_params():
    from flax import nnx

    from ftcot_jax.models import sharding

    model = models.from_config(TINY_LLAMA, seed=4)
    ids, mask = padded_batch(TINY_LLAMA["vocab_size"], lengths=(5, 3, 2, 4), seed=3)
    want, _ = decode.generate_ids(model, ids, mask, max_new_tokens=6, eos_token_id=[])
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, state = nnx.split(model)
    sharded = nnx.merge(graphdef, jax.device_put(state, sharding.logical_to_sharding(state, mesh)))
    with jax.set_mesh(mesh):
        got, _ = decode.generate_ids(sharded, ids, mask, max_new_tokens=6, eos_token_id=[])
    np.testing.assert_array_equal(got, want)


def test_models_dispatch_on_their_protocol(monkeypatch, tiny_t5):
    begun = []
    for module in (causal, seq2seq):
        real = module.begin
        monkeypatch.setattr(
            module, "begin", lambda *a, real=real, name=module.__name__, **k: (begun.append(name), real(*a, **k))[1]
        )
    ids, mask = np.array([[5, 6, 7, 1]]), np.array([[1, 1, 1, 1]])
    t5_tokens, _ = decode.generate_ids(tiny_t5, ids, mask, max_new_tokens=4)
    decode.generate_ids(models.from_config(TINY_GPT2, seed=0), ids, mask, max_new_tokens=4)
    assert begun == ["ftcot_jax.decode.seq2seq", "ftcot_jax.decode.causal"] and t5_tokens.shape == (1, 4)
    with pytest.raises(TypeError, match="neither"):
        decode.generate_ids(object(), ids, mask, max_new_tokens=4)
