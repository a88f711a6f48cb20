"""`trained`: what a path names (`locate`) and a trained student's format (`TrainedFormat.prompt/parse`), on
directories the tests lay out; loading real checkpoints is in tests/integration/test_trained_student.py."""

from __future__ import annotations

import json

import pytest

from ftcot_jax import scoring
from ftcot_jax.trained import FORMAT_FILE, Parsed, TrainedFormat, choose_step, locate


def _fmt(task="last_letter_concatenation", method="ft_cot", kind="decoder"):
    template = {"ft": "ft_token", "ft_cot": "ft_cot_token"}[method]
    return TrainedFormat(task, method, template, kind, 24, 1, 0.5, "best", 96)


def _train_dir(path):
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_prompt_is_the_training_input_of_each_model_kind():
    q = '  Take the last letters of each words in "Lucky Mireya" and concatenate them. '
    assert _fmt().prompt(q) == q.strip() + " ###"
    assert _fmt(kind="encoder_decoder").prompt(q) == q.strip()
    assert _fmt(method="ft").prompt(q) == q.strip() + " ###"


@pytest.mark.parametrize(
    "task, method, completion, want",
    [
        ("last_letter_concatenation", "ft_cot", ' "Lucky" ends in "y", "Mireya" in "a". --> ya', Parsed(None, "ya")),
        ("multiarith", "ft_cot", " 3 + 4 = 7, 7 * 2 = 14. --> 14", Parsed(None, "14")),
        ("single_eq", "ft_cot", " 10 - 2.5 = 7.5 --> 7.5", Parsed(None, "7.5")),
        ("single_eq", "ft_cot", " 3 + 4 = 7 --> 7", Parsed(None, "7")),
        ("coin_flip", "ft_cot", " Flipped twice: heads. --> yes", Parsed(None, "yes")),
        ("multiarith", "ft_cot", " 3 + 4 = 7 and then 9", Parsed(None, "9")),  # no "-->": the last number
        ("aqua", "ft_cot", " 6 * 7 = 42, so --> C", Parsed(None, "C")),
        ("multiarith", "ft", " 14", Parsed(None, "14")),
        ("multiarith", "ft_cot", " nothing here --> none", Parsed(None, None)),
    ],
)
def test_parse_splits_rationale_and_answer_as_the_evaluation_scores(task, method, completion, want):
    got = _fmt(task, method).parse(completion)
    template = {"ft": "ft_token", "ft_cot": "ft_cot_token"}[method]
    prediction, _ = scoring.cleanse_prediction(task, completion, template)
    assert got.answer == want.answer
    assert (got.answer is None) == (prediction is None)
    if method == "ft":
        assert got.rationale is None
    else:
        assert got.rationale == completion.split("-->")[0].strip()


def test_card_round_trips_through_json():
    f = _fmt()
    assert TrainedFormat(**json.loads(json.dumps(f.card()))) == f


def test_locate_names_train_dirs_steps_run_dirs_and_exports(tmp_path):
    train = _train_dir(tmp_path / "run" / "train" / "multiarith" / "ft_cot")
    (train / "checkpoints" / "24").mkdir()
    (tmp_path / "run" / "stages.json").write_text("{}")
    assert locate(train).kind == "train" and locate(train).path == train
    step = locate(train / "checkpoints" / "24")
    assert (step.kind, step.path, step.step_dir) == ("train", train, train / "checkpoints" / "24")
    assert locate(train / "checkpoints").path == train
    assert locate(tmp_path / "run").path == train  # a run dir with one student
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert locate(export).kind == "model"
    (export / FORMAT_FILE).write_text(json.dumps(_fmt().card()))
    assert locate(export).kind == "export"
    assert locate("smollm2-135m-instruct").kind == "model"  # names are models.load's to resolve


def test_locate_errors_name_the_path_and_what_was_expected(tmp_path):
    run = tmp_path / "run"
    _train_dir(run / "train" / "multiarith" / "ft")
    _train_dir(run / "train" / "multiarith" / "ft_cot")
    with pytest.raises(ValueError, match=r"holds 2 trained students; name one: .*multiarith/ft, .*multiarith/ft_cot"):
        locate(run)
    empty = tmp_path / "empty_run"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no trained student yet"):
        locate(empty)
    with pytest.raises(ValueError, match=r"not a student; expected an `ftcot run` run dir"):
        locate(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not readable JSON"):
        locate(bad)


def test_choose_step_is_one_rule_for_loading_and_exporting():
    history = [{"step": 10, "accuracy": 0.2}, {"step": 20, "accuracy": 0.5}, {"step": 30, "accuracy": 0.5}]
    # best: the first epoch of the highest accuracy, with its evaluation
    assert choose_step(history, [10, 20, 30], "best", where="d") == (20, history[1], "best")
    assert choose_step(history, [10, 20, 30], "last", where="d") == (30, history[2], "last")
    assert choose_step(history, [10, 20, 30], "10", where="d") == (10, history[0], "step")
    assert choose_step([], [10, 20], "best", where="d") == (20, None, "last")  # never evaluated
    with pytest.raises(ValueError, match=r"^runs/x: the best epoch \(step 20\) was not kept .*saved steps: 10, 30"):
        choose_step(history, [10, 30], "best", where="runs/x")
    with pytest.raises(ValueError, match=r"^runs/x: no checkpoint of step 40; saved steps: 10, 20, 30$"):
        choose_step(history, [10, 20, 30], 40, where="runs/x")
    with pytest.raises(ValueError, match=r"^step 'first': expected best, last or a step number$"):
        choose_step(history, [10, 20, 30], "first", where="runs/x")
