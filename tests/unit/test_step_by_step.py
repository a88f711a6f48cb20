"""Distilling step-by-step (method step_by_step): two samples per question (predict, explain) with their
prefixes for both model kinds, the loss weighting the two tasks by label_weight (computed by hand on a tiny
model), label-only evaluation, the same curation as Fine-tune-CoT, one-line errors."""

import dataclasses

import numpy as np
import optax
import pytest

from ftcot_jax import models, prompts, scoring
from ftcot_jax.config import TrainConfig
from ftcot_jax.pipeline import curate
from ftcot_jax.train import batches
from ftcot_jax.train.loss import loss_for
from ftcot_jax.trained import TrainedFormat
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2, CHAR_T5, forward


def _samples(n=3):
    return [dataclasses.replace(s, method="step_by_step") for s in last_letter_samples(n, seed=2, method="ft_cot")]


def test_two_samples_per_question_with_prefixes():
    s = _samples(1)[0]
    assert prompts.finetune_input("sbs_predict", "decoder", s.question) == f"predict: {s.question} ###"
    assert prompts.finetune_input("sbs_explain", "decoder", s.question) == f"explain: {s.question} ###"
    assert prompts.finetune_input("sbs_predict", "encoder_decoder", s.question) == f"predict: {s.question}"
    assert prompts.finetune_input("sbs_explain", "encoder_decoder", s.question) == f"explain: {s.question}"
    assert prompts.finetune_label("sbs_predict", "decoder", s.answer) == f" {s.answer}"
    assert prompts.finetune_label("sbs_explain", "encoder_decoder", s.answer, s.rationale) == s.rationale
    with pytest.raises(ValueError, match="needs a rationale"):
        prompts.finetune_label("sbs_explain", "decoder", s.answer)


@pytest.mark.parametrize("model_type", ["decoder", "encoder_decoder"])
def test_encoded_rows_and_weights(char_tokenizer, model_type):
    samples = _samples(2)
    enc = batches.encode_samples(samples, char_tokenizer, model_type=model_type, max_length=128, label_weight=0.3)
    assert len(enc) == 4 and enc.weights == pytest.approx([0.3, 0.7, 0.3, 0.7])
    assert enc.sample_keys == [(0, 0), (0, 0), (1, 0), (1, 0)]
    text = lambda ids: char_tokenizer.decode(ids, skip_special_tokens=True)
    lead = " " if model_type == "decoder" else ""
    assert text(enc.source[0]).startswith("predict: ") and text(enc.source[1]).startswith("explain: ")
    assert text(enc.target[0]) == lead + samples[0].answer
    assert text(enc.target[1]) == lead + samples[0].rationale
    ft_cot = batches.encode_samples(
        last_letter_samples(2, method="ft_cot"), char_tokenizer, model_type=model_type, max_length=128
    )
    assert ft_cot.weights is None and len(ft_cot) == 2  # other methods: one row per sample, weight 1


def _hand_loss(model, enc, a: float):
    """sum over label tokens of weight * cross-entropy / sum of weights, one decoder row at a time."""
    total = weights = 0.0
    for i in range(len(enc)):
        seq = enc.source[i] + enc.target[i]
        logits = np.asarray(forward(model, np.array([seq]), np.ones((1, len(seq)), np.int32)))[0]
        w = a if i % 2 == 0 else 1 - a  # predict rows first, then explain rows
        for j in range(len(enc.source[i]), len(seq)):
            logp = logits[j - 1] - np.log(np.exp(logits[j - 1] - logits[j - 1].max()).sum()) - logits[j - 1].max()
            total += w * -logp[seq[j]]
            weights += w
    return total / weights


@pytest.mark.parametrize("a", [0.5, 0.2, 1.0])
def test_loss_weights_the_two_tasks_by_label_weight(char_tokenizer, a):
    model = models.from_config(CHAR_GPT2, seed=0)
    enc = batches.encode_samples(_samples(2), char_tokenizer, model_type="decoder", max_length=128, label_weight=a)
    batcher = batches.Batcher(enc, batch_size=4, bucket=16, pad_id=0)
    rows = batcher.rows(0, 0)[0]
    mb = {k: v[0] for k, v in batcher.batch(0, 0).items()}
    loss_sum, n = loss_for(model, head_chunk=0)(model, mb)
    order = [int(i) for i in rows]  # the batch's rows in permuted order: compare as a set of rows
    assert sorted(order) == [0, 1, 2, 3]
    assert float(n) == pytest.approx(sum(enc.weights[i] * len(enc.target[i]) for i in range(4)))
    assert float(loss_sum / n) == pytest.approx(_hand_loss(model, enc, a), rel=1e-4)


def test_seq2seq_loss_weights(char_tokenizer):
    model = models.from_config(CHAR_T5, seed=0)
    a = 0.25
    enc = batches.encode_samples(
        _samples(1), char_tokenizer, model_type="encoder_decoder", max_length=128, label_weight=a
    )
    batcher = batches.Batcher(enc, batch_size=2, bucket=16, pad_id=0)
    mb = {k: v[0] for k, v in batcher.batch(0, 0).items()}
    loss_sum, n = loss_for(model, head_chunk=0)(model, mb)
    logits = model(
        mb["input_ids"],
        attention_mask_BxL=mb["attention_mask"],
        decoder_input_ids_BxT=mb["decoder_input_ids"],
        decoder_attention_mask_BxT=mb["decoder_attention_mask"],
    )
    nll = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, mb["targets"]))
    want = 0.0
    for r, i in enumerate(batcher.rows(0, 0)[0]):
        m = len(enc.target[i])
        want += (a if i == 0 else 1 - a) * nll[r, :m].sum()
    assert float(n) == pytest.approx(a * len(enc.target[0]) + (1 - a) * len(enc.target[1]))
    assert float(loss_sum) == pytest.approx(want, rel=1e-5)


def test_label_only_evaluation():
    cfg = TrainConfig(method="step_by_step", task="multiarith")
    assert cfg.template == "sbs_predict"
    fmt = TrainedFormat("multiarith", "step_by_step", cfg.template, "decoder", 1, 0, None, "best", 8)
    assert fmt.prompt("How many?") == "predict: How many? ###"
    assert fmt.explain_prompt("How many?") == "explain: How many? ###"
    assert fmt.parse(" 42").answer == "42" and fmt.parse(" 42").rationale is None
    assert scoring.evaluate_completion("multiarith", " 42 and 7", "42", "sbs_predict")["correct"]  # first number
    with pytest.raises(ValueError, match="learnt no explain task"):
        dataclasses.replace(fmt, method="ft_cot").explain_prompt("q")


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_label_weight_outside_0_1_is_a_one_line_error(bad, char_tokenizer):
    with pytest.raises(ValueError, match=r"label_weight must be in \[0, 1\]") as e:
        TrainConfig(method="step_by_step", label_weight=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"label_weight must be in \[0, 1\]"):
        batches.encode_samples(_samples(1), char_tokenizer, model_type="decoder", max_length=64, label_weight=bad)


def test_same_curation_as_fine_tune_cot(tmp_path):
    from ftcot_jax.tasks import load_task
    from ftcot_jax.teacher.cache import TeacherCache
    from tests.unit.test_curate import TASK, _flip, _rec

    train = load_task(TASK).split("train")
    with TeacherCache(tmp_path, task=TASK, teacher_model="m", temperature=0) as c:
        for i in range(6):
            c.append(_rec(train[i], "train", 0, f" {train[i].answer if i % 3 else _flip(train[i].answer)}."))
    cot = curate.curate_cot(c, completion_indices=[0])
    sbs = curate.curate_cot(c, completion_indices=[0], method="step_by_step")
    assert [s.sample_index for s in sbs.samples] == [s.sample_index for s in cot.samples] and sbs.samples
    assert {s.method for s in sbs.samples} == {"step_by_step"}
    assert [dataclasses.replace(s, method="ft_cot") for s in sbs.samples] == cot.samples
    m = curate.Method("step_by_step", "step_by_step")
    assert (m.train_method, m.teacher_kind, m.label) == ("step_by_step", "ft_cot", "Distilling step-by-step")


def test_sample_file_round_trip(tmp_path):
    from ftcot_jax.samples import read_samples, write_samples

    write_samples(tmp_path / "s.tfrecord", _samples(2))
    assert read_samples(tmp_path / "s.tfrecord") == _samples(2)


def test_trainer_learns_both_tasks_and_evaluates_predict_with_votes(tmp_path, char_tokenizer):
    """One epoch of a tiny step_by_step student: two rows per question, the epoch's evaluation asks `predict` only,
    greedy and with 2 samples per question; the votes are written beside the predictions."""
    import json

    from ftcot_jax.config import from_dict
    from ftcot_jax.tasks import Example
    from ftcot_jax.train.loop import train

    model_config = dict(CHAR_GPT2, n_layer=1, n_embd=16, n_head=2, n_positions=64)
    cfg = from_dict(
        TrainConfig,
        dict(
            run_dir=str(tmp_path / "run"), student={"from_scratch": True, "model_config": model_config},
            method="step_by_step", label_weight=0.3, epochs=1, batch_size=4, bucket=16, mesh={"num_devices": 1},
            eval={"batch_size": 4, "max_new_tokens": 4, "samples": 2, "temperature": 1.0}, export=False,
        ),
    )  # fmt: skip
    test = [Example(s.sample_index, s.question, s.answer, None) for s in last_letter_samples(2, seed=9)]
    result = train(cfg, tokenizer=char_tokenizer, samples=_samples(4), eval_examples=test)
    assert result.steps == 2  # 4 questions -> 8 rows -> 2 batches of 4
    (h,) = result.history
    assert h["n"] == 2 and h["samples"] == 2 and set(h) >= {"maj_accuracy", "pass_accuracy", "maj_by_k"}
    run = tmp_path / "run"
    preds = [json.loads(x) for x in (run / "predictions" / "epoch_000.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in preds] == [f"predict: {e.question} ###" for e in test]
    votes = [json.loads(x) for x in (run / "predictions" / "epoch_000.samples.jsonl").read_text().splitlines()]
    assert [len(v["samples"]) for v in votes] == [2, 2] and [v["question"] for v in votes] == [e.question for e in test]
    assert json.loads((run / "results.json").read_text())["history"] == [h]
