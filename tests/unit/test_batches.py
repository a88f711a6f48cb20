"""Samples -> tokens -> batches (train/batches.py): loss mask on label tokens only, truncation counted,
seeded and resumable order, bounded shapes, per-host slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ftcot_jax.train import batches as D
from tests.helpers.data import last_letter_samples


@pytest.fixture
def tok(char_tokenizer):
    return char_tokenizer


def _enc(tok, samples, model_type="decoder", max_length=512):
    return D.encode_samples(samples, tok, model_type=model_type, max_length=max_length)


def test_decoder_tokens_and_loss_mask_are_exactly_the_label(tok):
    samples = last_letter_samples(5, method="ft_cot")
    enc = _enc(tok, samples)
    b = D.Batcher(enc, batch_size=5, seed=3, bucket=16, pad_id=0).batch(0, 0)
    rows = D.Batcher(enc, batch_size=5, seed=3).rows(0, 0)[0]
    for r, i in enumerate(rows):
        s = samples[i]
        prompt = tok.encode(f"{s.question} ###", add_special_tokens=False)
        label = tok.encode(f" {s.rationale} --> {s.answer}", add_special_tokens=False) + [tok.eos_token_id]
        n = len(prompt) + len(label)
        np.testing.assert_array_equal(b["input_ids"][0, r, :n], prompt + label)
        np.testing.assert_array_equal(b["attention_mask"][0, r], [1] * n + [0] * (b["input_ids"].shape[2] - n))
        on = np.flatnonzero(b["loss_mask"][0, r])
        # Exactly the positions that predict a label token, and the targets there are the label + EOS.
        assert on.tolist() == list(range(len(prompt) - 1, n - 1))
        assert b["targets"][0, r, on].tolist() == label
        assert tok.decode(b["targets"][0, r, on][:-1]) == f" {s.rationale} --> {s.answer}"
        np.testing.assert_array_equal(b["positions"][0, r], np.arange(b["input_ids"].shape[2]))


def test_seq2seq_batches_shift_targets_right(tok):
    samples = last_letter_samples(3, method="ft_cot")
    enc = _enc(tok, samples, model_type="encoder_decoder")
    b = D.Batcher(enc, batch_size=4, bucket=8, pad_id=0, decoder_start_id=0).batch(0, 0)
    for r, i in enumerate(D.Batcher(enc, batch_size=4).rows(0, 0)[0]):
        if i < 0:
            assert b["loss_mask"][0, r].sum() == 0  # filler row of the last (short) batch
            continue
        t = enc.target[i]
        assert t[-1] == tok.eos_token_id and tok.decode(t[:-1]) == f"{samples[i].rationale} --> {samples[i].answer}"
        assert b["decoder_input_ids"][0, r, : len(t)].tolist() == [0] + t[:-1]
        assert b["targets"][0, r, : len(t)].tolist() == t
        assert b["loss_mask"][0, r].tolist() == [1] * len(t) + [0] * (b["targets"].shape[2] - len(t))
        assert b["input_ids"][0, r, : len(enc.source[i])].tolist() == enc.source[i]


def test_truncation_is_counted_and_reported(tok):
    long = dataclasses.replace(last_letter_samples(1, method="ft_cot")[0], question="ab " * 40, rationale="x" * 100)
    samples = last_letter_samples(3) + [long]
    with pytest.warns(UserWarning, match=r"1 of 4 prompts and 1 of 4 labels .* truncated"):
        enc = _enc(tok, samples, max_length=50)
    assert (enc.truncated_prompts, enc.truncated_labels) == (1, 1)
    assert len(enc) == 4  # kept, not dropped
    assert len(enc.source[3]) == 50 and len(enc.target[3]) == 50


def test_order_is_seeded_complete_and_resumable(tok):
    enc = _enc(tok, last_letter_samples(21))
    b = D.Batcher(enc, batch_size=4, seed=7, bucket=16)
    assert b.steps_per_epoch == 6
    for epoch in range(2):
        ids = np.concatenate([b.rows(epoch, i).ravel() for i in range(6)])
        assert sorted(ids[ids >= 0].tolist()) == list(range(21)) and (ids < 0).sum() == 3
    assert not np.array_equal(b.permutation(0), b.permutation(1))
    again = D.Batcher(enc, batch_size=4, seed=7, bucket=16)
    np.testing.assert_array_equal(again.batch(1, 3)["input_ids"], b.batch(1, 3)["input_ids"])
    assert not np.array_equal(D.Batcher(enc, batch_size=4, seed=8).permutation(0), b.permutation(0))
    # iterate() from a saved position replays the rest of the run exactly.
    full = [(pos, x["input_ids"]) for pos, x in b.iterate(0, 0, epochs=2)]
    tail = [(pos, x["input_ids"]) for pos, x in b.iterate(1, 2, epochs=2)]
    assert [p for p, _ in full[8:]] == [p for p, _ in tail]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(full[8:], tail, strict=True))


def test_lengths_are_bucketed(tok):
    enc = _enc(tok, last_letter_samples(40, method="ft_cot"))
    b = D.Batcher(enc, batch_size=8, bucket=32)
    shapes = {b.batch(e, i)["input_ids"].shape[2] for e in range(3) for i in range(b.steps_per_epoch)}
    assert all(s % 32 == 0 for s in shapes) and len(shapes) <= 2


def test_per_host_slices_make_the_global_batch(tok):
    enc = _enc(tok, last_letter_samples(16))
    whole = D.Batcher(enc, batch_size=8, grad_accum=2, seed=1, bucket=16).batch(0, 1)
    parts = [
        D.Batcher(enc, batch_size=8, grad_accum=2, seed=1, bucket=16, process_index=p, process_count=2).batch(0, 1)
        for p in range(2)
    ]
    for k in whole:
        assert parts[0][k].shape == (2, 2) + whole[k].shape[2:]
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), whole[k])
    with pytest.raises(ValueError, match="cannot be split over 3 hosts"):
        D.Batcher(enc, batch_size=8, grad_accum=2, process_count=3)
