"""Answer parsing and scoring (scoring.py), case by case from the reference rules
(github.com/itsnamgyu/reasoning-teacher, src/evaluation/evaluator.py)."""

import pytest

from ftcot_jax.scoring import (
    check_answer,
    cleanse_answer,
    cleanse_prediction,
    evaluate_completion,
    extract_candidates,
    summarize,
)
from ftcot_jax.tasks import TASK_NAMES, load_task


def pred(task, text, template):
    return cleanse_prediction(task, text, template)[0]


# --- candidates ---------------------------------------------------------------------------------


def test_multiple_choice_capitals_inside_words():
    # Any capital A-E counts, even inside words: "Bob" gives B, "Answer" gives A.
    assert extract_candidates("commonsense_qa", "Bob says (C)") == ["B", "C"]
    assert pred("commonsense_qa", "Answer: C", "zs_cot") == "A"
    assert pred("aqua", "The answer is (E). Explanation: Fine.", "ft_token") == "E"  # "T" is not A-E
    assert extract_candidates("date_understanding", "ABCDEFG") == list("ABCDEF")
    assert extract_candidates("tracking_shuffled_objects", "Dave has the (B) ball. Alice") == ["B", "A"]
    assert extract_candidates("aqua", "f lower case only") == []


def test_numbers_commas_signs_decimals():
    assert extract_candidates("gsm8k", "He has 1,234 apples and -5.5 pears, 3. 4") == ["1234", "-5.5", "3", "4"]
    assert extract_candidates("svamp", "1,000.50 and 7") == [1000.5, 7.0]
    assert extract_candidates("multiarith", "no digits") == []
    assert pred("gsm8k", "The answer is 2,125 dollars.", "fs_cot") == "2125"


def test_yes_no_punctuation():
    text = 'Thus: "Yes." No, never! yes! maybe'
    # Quotes, newlines, dots, whitespace, colons, commas are separators; "!" is not.
    assert extract_candidates("strategy_qa", text) == ["yes", "no"]
    assert extract_candidates("coin_flip", "So the coin is\nno'longer heads up: yes") == ["no", "yes"]
    assert extract_candidates("coin_flip", "Yesterday nope") == []


def test_last_letters_whole_string_with_quotes():
    assert extract_candidates("last_letter_concatenation", ' "ya jo".\n') == ["yajo"]
    assert extract_candidates("last_letter_concatenation", "it's") == ["its"]
    # Without a prefix the whole completion is the candidate, so a sentence is never right.
    assert not check_answer("last_letter_concatenation", "The answer is yajo.", "yajo", "zs_cot")
    assert check_answer("last_letter_concatenation", 'Concatenate them --> "yajo".', "yajo", "ft_cot_token")
    assert check_answer("last_letter_concatenation", "The answer is yajo.", "yajo", "fs_cot")


# --- prefix rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3 apples and 4 pears --> 7", "7"),  # present: first candidate after it
        ("3 apples and 4 pears, so 7", "7"),  # absent: last candidate of the whole text
        ("1 --> 2 --> 3", "2"),  # repeated: text after the FIRST occurrence, its first candidate
        ("x --> no number here", None),  # present but nothing after it: no prediction
        ("-->5", "5"),
    ],
)
def test_ft_cot_token_prefix(completion, expected):
    assert pred("multiarith", completion, "ft_cot_token") == expected


def test_prefix_per_template():
    text = "First 1, then 2. The answer is 3. Therefore, the answer is 4 --> 5"
    assert pred("gsm8k", text, None) == "1"
    assert pred("gsm8k", text, "zs") == "1"
    assert pred("gsm8k", text, "zs_cot") == "1"
    assert pred("gsm8k", text, "ft_token") == "1"
    assert pred("gsm8k", text, "ft_natural") == "1"
    assert pred("gsm8k", text, "fs_cot") == "3"
    assert pred("gsm8k", text, "ft_cot_natural") == "4"
    assert pred("gsm8k", text, "ft_cot_token") == "5"
    with pytest.raises(ValueError, match="unknown prediction template 'ft'"):
        pred("gsm8k", text, "ft")
    with pytest.raises(ValueError, match="unknown task 'math'"):
        pred("math", text, None)


# --- gold answers and comparison -------------------------------------------------------------------


def test_string_vs_float_comparison_quirk():
    # GSM8K / MultiArith compare strings: "18.0" is not "18" (kept for paper comparability).
    assert not check_answer("gsm8k", "18.0", "18", "zs_cot")
    assert not check_answer("multiarith", "18", "18.0", "zs_cot")
    assert check_answer("gsm8k", "The total is 1,800.", "1,800", "zs_cot")
    # AddSub / SVAMP / SingleEq compare floats.
    assert check_answer("single_eq", "43", "43.0", "zs_cot")
    assert check_answer("svamp", "51.0000001", "51.0", "zs_cot")
    assert not check_answer("addsub", "51.00001", "51", "zs_cot")
    # Opt-in lenient mode (not the reference) compares GSM8K/MultiArith numerically too.
    assert check_answer("gsm8k", "18.0", "18", "zs_cot", lenient_numbers=True)


def test_cleanse_answer():
    assert cleanse_answer("gsm8k", "2,125") == "2125"
    assert cleanse_answer("strategy_qa", "Yes") == "yes"
    assert cleanse_answer("coin_flip", "yes") == "yes"
    assert cleanse_answer("single_eq", "43.0") == 43.0
    assert cleanse_answer("aqua", "C") == "C"
    with pytest.raises(ValueError, match="task 'svamp': gold answer 'x' is not a number"):
        cleanse_answer("svamp", "x")


def test_strategy_qa_capitalised_gold():
    assert check_answer("strategy_qa", "Yes.", "Yes", "zs_cot")
    assert check_answer("strategy_qa", "Hmm. --> No", "No", "ft_cot_token")
    assert not check_answer("strategy_qa", "YES!", "Yes", "zs_cot")


# --- records and summaries -----------------------------------------------------------------------------


def test_record_fields():
    rec = evaluate_completion("aqua", "A long reasoning... --> (C) 24", "C", "ft_cot_token", finish_reason="stop")
    assert rec == {
        "prediction": "C",
        "correct": True,
        "contains_answer": True,
        "correct_format": True,
        "complete": True,
    }
    rec = evaluate_completion("gsm8k", "I think 5, maybe 7", "5", "ft_cot_token", finish_reason="length")
    # No "-->": last candidate (7) is wrong, but the answer is among the candidates.
    assert rec == {
        "prediction": "7",
        "correct": False,
        "contains_answer": True,
        "correct_format": False,
        "complete": False,
    }
    rec = evaluate_completion("coin_flip", "no idea", "yes", None)
    assert rec == {
        "prediction": "no",
        "correct": False,
        "contains_answer": False,
        "correct_format": True,
        "complete": False,
    }


def test_none_completion():
    rec = evaluate_completion("svamp", None, "5.0", "ft_cot_token", finish_reason=None)
    assert rec == {
        "prediction": None,
        "correct": False,
        "contains_answer": False,
        "correct_format": False,
        "complete": False,
    }
    assert not check_answer("svamp", None, "5.0", "zs_cot")
    assert evaluate_completion("svamp", "", "5.0", "zs")["prediction"] is None


def test_summarize():
    recs = [
        evaluate_completion("multiarith", "--> 4", "4", "ft_cot_token", "stop"),
        evaluate_completion("multiarith", "4 or 5", "4", "ft_cot_token", "stop"),
        evaluate_completion("multiarith", "--> 6", "4", "ft_cot_token", None),
        evaluate_completion("multiarith", None, "4", "ft_cot_token", None),
    ]
    assert summarize(recs) == {"accuracy": 0.25, "contains_answer": 0.5, "correct_format": 0.5, "complete": 0.5, "n": 4}
    assert summarize([]) == {"accuracy": 0.0, "contains_answer": 0.0, "correct_format": 0.0, "complete": 0.0, "n": 0}
    with pytest.raises(ValueError, match="record 0 has no complete"):
        summarize([{"correct": True, "contains_answer": True, "correct_format": True}])


@pytest.mark.parametrize("name", TASK_NAMES)
def test_gold_answer_of_every_example_scores_itself(name):
    """Every stored gold answer, written as each kind of model would, parses back as correct."""
    for ex in load_task(name).split("test"):
        assert check_answer(name, f"reasoning --> {ex.answer}", ex.answer, "ft_cot_token"), ex
        assert check_answer(name, f"Reasoning. The answer is {ex.answer}.", ex.answer, "fs_cot"), ex
        assert check_answer(name, ex.answer, ex.answer, "zs"), ex
