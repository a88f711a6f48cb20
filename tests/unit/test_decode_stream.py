"""Streaming out of the decode loop: `generate(..., on_chunk=)` sees each prompt's tokens every `check_every`
steps (prefixes of its final tokens, each done prompt reported once with its final Generation), leaves the
result unchanged, can end prompts early; `stream_text` never gives text that the final text does not start
with, nor text at or past a stop string."""

import jax
import pytest

from ftcot_jax import decode
from tests.helpers.toy_tokenizers import LetterTokenizer

PROMPTS = ["hello world", "abc", "the quick fox"]


# sampled (a random greedy model repeats one letter): rows of 40 tokens, of 8 and an EOS, of 23 and an EOS
SAMPLED = dict(temperature=0.8, rng=jax.random.key(5))


def _run(model, tok, **kw):
    seen = []

    def on_chunk(partials):
        seen.append(list(partials))

    gens = decode.generate(model, tok, PROMPTS, batch_size=4, on_chunk=on_chunk, **kw)
    return gens, seen


def test_on_chunk_sees_prefixes_and_each_final_once_without_changing_the_result(letter_gpt2):
    tok = LetterTokenizer()
    free = decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=40, batch_size=4, **SAMPLED)
    assert [len(g.token_ids) for g in free] == [40, 8, 23], [g.text for g in free]
    budgets, stops = [40, 40, 3], [[free[0].text[18:20]], ["zz"], []]  # row 0 meets its stop after ~20 tokens
    want = decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=budgets, batch_size=4, stop=stops, **SAMPLED)
    got, seen = _run(letter_gpt2, tok, max_new_tokens=budgets, stop=stops, check_every=8, **SAMPLED)
    assert got == want
    assert [g.finish_reason for g in want] == ["stop", "stop", "length"] and len(want[0].token_ids) > 16
    finals = {}
    for k, partials in enumerate(seen):
        for p in partials:
            assert p.index not in finals, "a done prompt is reported once"
            if p.final is None:
                assert want[p.index].token_ids[: len(p.token_ids)] == p.token_ids
                assert len(p.token_ids) == 8 * (k + 1)  # every check_every steps
            else:
                finals[p.index] = p.final
                assert p.final == want[p.index] and p.token_ids == p.final.token_ids
    assert sorted(finals) == [0, 1, 2]
    assert [p.index for p in seen[0] if p.final] == [2]  # its budget of 3
    assert [p.index for p in seen[1] if p.final] == [1]  # EOS at step 9
    assert seen[-1] == [decode.Partial(0, want[0].token_ids, want[0])]  # the last chunk: the stop string


def test_on_chunk_ends_the_prompts_it_returns(letter_gpt2):
    tok = LetterTokenizer()
    full = decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=40, batch_size=4)
    calls = []

    def drop_all(partials):
        calls.append(len(partials))
        return [p.index for p in partials]

    got = decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=40, batch_size=4, on_chunk=drop_all, check_every=8)
    assert calls == [3]  # every row ended at the first chunk: the loop stops there
    for g, f in zip(got, full, strict=True):
        assert f.token_ids[: len(g.token_ids)] == g.token_ids and len(g.token_ids) <= 8


def test_on_chunk_on_the_t5_path(tiny_t5):
    tok = LetterTokenizer()
    want = decode.generate(tiny_t5, tok, PROMPTS, max_new_tokens=[3, 20, 9], batch_size=4)
    got, seen = _run(tiny_t5, tok, max_new_tokens=[3, 20, 9], check_every=4)
    assert got == want
    first = sorted(seen[0], key=lambda p: p.index)  # partials come in batch order (prompts sorted by length)
    assert [len(p.token_ids) for p in first] == [3, 4, 4] and first[0].final == want[0]
    assert all(want[p.index].token_ids[: len(p.token_ids)] == p.token_ids for ps in seen for p in ps)


class BytesTokenizer:
    """Token i is byte i: multi-byte characters arrive one byte (token) at a time."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_stream_text_holds_back_what_may_still_change():
    tok = BytesTokenizer()
    ids = list("déjà vu\n\nQ: next".encode())
    stop = ["\n\nQ:"]
    final = decode.finish(tok, ids, len(ids), stop, eos=[]).text
    assert final == "déjà vu"
    sent = ""
    for k in range(len(ids) + 1):
        text = decode.stream_text(tok, ids[:k], stop)
        assert final.startswith(text) and text.startswith(sent) and "\ufffd" not in text, (k, text)
        sent = text
    assert decode.stream_text(tok, list(b"ab\n\n"), stop) == "ab"  # trailing whitespace: maybe a stop
    assert decode.stream_text(tok, list(b"ab\n\nQ"), stop) == "ab"  # a stop string's beginning
    assert decode.stream_text(tok, list(b"ab\n\nR"), stop) == "ab\n\nR"
    assert decode.stream_text(tok, list("d\u00e9".encode())[:-1], []) == "d"  # half of a character
    assert decode.stream_text(tok, list(b"a STOP b"), ["STOP", "a S"]) == ""  # the earliest stop wins


@pytest.mark.parametrize("check_every", [1, 3])
def test_streamed_text_is_a_prefix_of_the_final_text(letter_gpt2, check_every):
    tok = LetterTokenizer()
    free = decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=30, batch_size=4, **SAMPLED)
    stops = [[g.text[4:7], "zz"] for g in free]
    texts = {}

    def on_chunk(partials):
        for p in partials:
            t = p.final.text if p.final else decode.stream_text(tok, p.token_ids, stops[p.index])
            assert t.startswith(texts.get(p.index, "")), (p.index, t)
            texts[p.index] = t

    got = decode.generate(
        letter_gpt2, tok, PROMPTS, max_new_tokens=30, batch_size=4, stop=stops, on_chunk=on_chunk,
        check_every=check_every, **SAMPLED,
    )  # fmt: skip
    assert got == decode.generate(letter_gpt2, tok, PROMPTS, max_new_tokens=30, batch_size=4, stop=stops, **SAMPLED)
    for i, g in enumerate(got):
        assert texts[i] == g.text and not any(s in g.text for s in stops[i])
