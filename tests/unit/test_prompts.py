"""Exact prompt/label strings of every template (prompts.py), as the reference formats them
(github.com/itsnamgyu/reasoning-teacher, src/data/format.py)."""

import pytest

from ftcot_jax import prompts
from ftcot_jax.tasks import load_task

Q = "  How many apples?\n"  # fields are stripped like the reference Formatter
R = "\n There are 3 apples. 3 + 2 = 5. "
A = " 5 "


def test_zs_cot_steps():
    step1 = prompts.zs_cot_step1_prompt(Q)
    assert step1 == "Q: How many apples?\nA: Let's think step by step."
    # No space between "step." and the stripped rationale: the reference code's behaviour.
    assert prompts.zs_cot_step2_prompt(step1, R) == (
        "Q: How many apples?\nA: Let's think step by step.There are 3 apples. 3 + 2 = 5.\nTherefore, the answer is"
    )


def test_zero_shot():
    assert prompts.zero_shot_prompt(Q, "decoder") == "Q: How many apples?\n\nA:"
    assert prompts.zero_shot_prompt(Q, "encoder_decoder") == "question: How many apples?"


def test_few_shot_cot():
    fs = "Q: a?\nA: b. The answer is 1."
    assert prompts.fs_cot_prompt(Q, fs) == "Q: a?\nA: b. The answer is 1.\nQ: How many apples?\nA:"
    task = load_task("coin_flip")
    q = task.examples[0].question
    assert prompts.prompt("fs_cot", "encoder_decoder", q, task.few_shot_cot_prompt) == (
        task.few_shot_cot_prompt + "\nQ: " + q + "\nA:"
    )
    with pytest.raises(ValueError, match="no"):
        prompts.prompt("fs_cot", "decoder", q, load_task("tracking_shuffled_objects").few_shot_cot_prompt)


def test_finetune_token_templates():
    assert prompts.finetune_input("ft_token", "decoder", Q) == "How many apples? ###"
    assert prompts.finetune_input("ft_cot_token", "decoder", Q) == "How many apples? ###"
    assert prompts.finetune_input("ft_token", "encoder_decoder", Q) == "How many apples?"
    assert prompts.finetune_input("ft_cot_token", "encoder_decoder", Q) == "How many apples?"
    assert prompts.finetune_label("ft_token", "decoder", A) == " 5"
    assert prompts.finetune_label("ft_token", "encoder_decoder", A) == "5"
    assert prompts.finetune_label("ft_cot_token", "decoder", A, R) == " There are 3 apples. 3 + 2 = 5. --> 5"
    assert prompts.finetune_label("ft_cot_token", "encoder_decoder", A, R) == "There are 3 apples. 3 + 2 = 5. --> 5"


def test_finetune_natural_template():
    assert (
        prompts.finetune_input("ft_cot_natural", "decoder", Q)
        == "Q: How many apples?\n\nA: Let's think step by step.\n\n"
    )
    assert prompts.finetune_label("ft_cot_natural", "decoder", A, R) == (
        " There are 3 apples. 3 + 2 = 5.\n\nTherefore the answer is 5"
    )
    with pytest.raises(ValueError, match="exists only for model_type 'decoder'"):
        prompts.finetune_input("ft_cot_natural", "encoder_decoder", Q)


def test_reference_example_line():
    """The OpenAI fine-tune example of the reference NB, minus its " END" stop phrase."""
    q = (
        "Yesterday was April 30, 2021. What is the date one year ago from today in MM/DD/YYYY?\nWhich choice is true? "
        "Answer choices: (A) 05/01/1971, (B) 04/01/2020, (C) 05/15/2020, (D) 05/01/2020, (E) 05/08/2020."
    )
    r = (
        " One year ago from today would be 2020. Today is 2021. 2020 is two years ago. Two years ago from today would "
        "be 05/01/2019."
    )
    assert prompts.finetune_input("ft_cot_token", "decoder", q) == q + " ###"
    assert prompts.finetune_label("ft_cot_token", "decoder", "D", r) + " END" == (
        " One year ago from today would be 2020. Today is 2021. 2020 is two years ago. "
        "Two years ago from today would be 05/01/2019. --> D END"
    )


def test_prompt_dispatch_and_errors():
    assert prompts.prompt("zs_cot", "decoder", Q) == prompts.zs_cot_step1_prompt(Q)
    assert prompts.prompt("zs", "encoder_decoder", Q) == "question: How many apples?"
    assert prompts.prompt("ft_cot_token", "decoder", Q) == "How many apples? ###"
    with pytest.raises(ValueError, match="unknown template 'cot'; expected one of: zs, zs_cot"):
        prompts.prompt("cot", "decoder", Q)
    with pytest.raises(ValueError, match="unknown model_type 'gpt'; expected one of: decoder, encoder_decoder"):
        prompts.zero_shot_prompt(Q, "gpt")
    with pytest.raises(ValueError, match="template 'ft_cot_token' needs a rationale; got None"):
        prompts.finetune_label("ft_cot_token", "decoder", A)
    with pytest.raises(ValueError, match="unknown fine-tune template 'zs'"):
        prompts.finetune_label("zs", "decoder", A)


def test_prefix_constants():
    assert prompts.PREDICTION_PREFIXES == {
        None: None,
        "zs": None,
        "ft_natural": None,
        "ft_token": None,
        "fs_cot": "The answer is",
        "zs_cot": None,
        "ft_cot_natural": "Therefore, the answer is",
        "ft_cot_token": "-->",
        "sbs_predict": None,  # Distilling step-by-step: the completion is the answer alone
        "sbs_explain": None,
    }
    assert prompts.FT_COT_TOKEN_PREFIX in prompts.finetune_label("ft_cot_token", "decoder", "1", "r")
