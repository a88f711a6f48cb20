"""Self-consistency: the vote (ties, unparseable samples, all wrong, K = 1 is greedy), K sampled rows of a
question decoding as K separate calls with the same keys, the evaluation's files, one-line errors."""

import json

import jax
import numpy as np
import pytest

from ftcot_jax import decode, evaluation, models, scoring
from ftcot_jax.config import EvalSection
from ftcot_jax.self_consistency import check_samples, ks_up_to, majority, summarize_votes, vote
from ftcot_jax.tasks import Example, load_task
from ftcot_jax.trained import LoadedStudent, TrainedFormat, evaluate_student
from tests.helpers.models import CHAR_GPT2, TINY_T5
from tests.helpers.toy_tokenizers import LetterTokenizer, ModuloLetterTokenizer

TASK = "multiarith"
TEMPLATE = "ft_cot_token"


def _records(completions, gold="4"):
    return [
        {"completion": c, "finish_reason": "stop", **scoring.evaluate_completion(TASK, c, gold, TEMPLATE, "stop")}
        for c in completions
    ]


def test_majority_ties_go_to_the_first_answer_and_none_does_not_vote():
    assert majority(["3", "4", "4", "3"]) == ("3", [["3", 2], ["4", 2]])
    assert majority([None, None, "7"]) == ("7", [["7", 1]])  # two unparseable samples do not outvote one answer
    assert majority([None, None]) == (None, [])


def test_vote_unparseable_samples_do_not_vote():
    v = vote(_records(["x --> 5", "no number", "nothing here", "y --> 4", "z --> 4"]))
    assert v["votes"] == [["5", 1], ["4", 2]] and v["majority"] == "4"
    assert v["maj_correct"] and v["pass_correct"]
    assert [s["prediction"] for s in v["samples"]] == ["5", None, None, "4", "4"]


def test_vote_tie_and_all_wrong():
    tie = vote(_records(["a --> 5", "b --> 4", "c --> 4", "d --> 5"]))
    assert tie["majority"] == "5" and not tie["maj_correct"] and tie["pass_correct"]
    wrong = vote(_records(["a --> 1", "b --> 2", "c --> 2"]))
    assert wrong["majority"] == "2" and not wrong["maj_correct"] and not wrong["pass_correct"]
    nothing = vote(_records(["none", "none"]))
    assert nothing["majority"] is None and not nothing["maj_correct"] and not nothing["pass_correct"]


def test_one_sample_is_greedy_scoring():
    for c in ("a --> 4", "a --> 3", "nothing", "4 then --> 9"):
        (rec,) = _records([c])
        v = vote([rec])
        assert v["maj_correct"] == v["pass_correct"] == rec["correct"]


def test_summary_and_maj_at_k_prefixes():
    votes = [
        vote(_records(["a --> 4", "b --> 1", "c --> 1", "d --> 1"])),  # maj@1 right, maj@4 wrong, pass right
        vote(_records(["a --> 1", "b --> 4", "c --> 4", "d --> 4"])),  # maj@1 wrong, maj@2 wrong (tie), maj@4 right
    ]
    s = summarize_votes(votes)
    assert s["samples"] == 4 and s["maj_accuracy"] == 0.5 and s["pass_accuracy"] == 1.0
    assert s["maj_by_k"] == {"1": 0.5, "2": 0.5, "4": 0.5}
    assert ks_up_to(8) == [1, 2, 4, 8] and ks_up_to(6) == [1, 2, 4, 6] and ks_up_to(1) == [1]


def test_float_tasks_vote_on_values():
    recs = [
        {"completion": c, **scoring.evaluate_completion("single_eq", c, "4", TEMPLATE, "stop")}
        for c in ("a --> 4.0", "b --> 4", "c --> 5")
    ]
    v = vote(recs)
    assert v["votes"] == [[4.0, 2], [5.0, 1]] and v["maj_correct"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(samples=0), "eval.samples must be an integer >= 1, got 0"),
        (dict(samples=4, temperature=0.0), "eval.samples=4 with temperature 0.0"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        EvalSection(**kwargs)
    assert "\n" not in str(e.value)
    check_samples(1, 0.0)  # greedy alone is fine
    with pytest.raises(ValueError, match="temperature > 0"):
        check_samples(2, 0.0)


def test_k_rows_of_a_prompt_decode_as_k_separate_calls(letter_gpt2, tiny_t5):
    """K copies of a prompt in one call with keys k_1..k_K give what K one-prompt calls with those keys give
    (each row draws with its own key: its tokens do not depend on the batch), for both model kinds."""
    keys = jax.random.split(jax.random.key(3), 4)
    kw = dict(max_new_tokens=8, temperature=1.5)
    for model, tok in ((letter_gpt2, LetterTokenizer()), (tiny_t5, ModuloLetterTokenizer(TINY_T5["vocab_size"]))):
        together = decode.generate(model, tok, ["hello"] * 4, batch_size=4, rng=keys, **kw)
        apart = [decode.generate(model, tok, ["hello"], batch_size=1, rng=keys[j : j + 1], **kw)[0] for j in range(4)]
        assert together == apart
        assert len({tuple(g.token_ids) for g in together}) > 1  # the rows really are different samples
    with pytest.raises(ValueError, match="3 keys for 4 prompts"):
        decode.generate(letter_gpt2, LetterTokenizer(), ["hello"] * 4, batch_size=4, rng=keys[:3], **kw)


@pytest.fixture(scope="module")
def char_gpt2():
    return models.from_config(CHAR_GPT2, seed=0)


EXAMPLES = [Example(i, f"what is {i} plus {i}?", str(2 * i), None) for i in range(3)]


def test_sample_and_vote_rows_use_per_question_keys(char_gpt2, char_tokenizer):
    """Sample j of question q draws with fold_in(rng, q * K + j): it equals a separate sampled call."""
    rng = jax.random.key(11)
    k = 3
    summary, votes = evaluation.sample_and_vote(
        char_gpt2, char_tokenizer, EXAMPLES, task=TASK, template=TEMPLATE, samples=k, temperature=1.0, rng=rng,
        batch_size=4, max_new_tokens=6,
    )  # fmt: skip
    assert summary["samples"] == k and len(votes) == len(EXAMPLES)
    q = 2
    prompt = f"{EXAMPLES[q].question} ###"
    for j in range(k):
        key = jax.random.fold_in(rng, q * k + j)[None]
        (g,) = decode.generate(
            char_gpt2, char_tokenizer, [prompt], max_new_tokens=6, batch_size=1, temperature=1.0, rng=key
        )
        assert votes[q]["samples"][j]["completion"] == g.text
    assert votes[q]["question"] == EXAMPLES[q].question and votes[q]["answer"] == "4"


def test_evaluate_student_writes_greedy_and_vote_files(char_gpt2, char_tokenizer, tmp_path):
    task = "last_letter_concatenation"  # short questions
    fmt = TrainedFormat(task, "ft_cot", TEMPLATE, "decoder", 7, 2, 0.5, "best", 6)
    student = LoadedStudent(char_gpt2, char_tokenizer, "tiny", fmt)
    cfg = EvalSection(limit=3, batch_size=4, max_new_tokens=6, samples=2, temperature=1.0)
    res = evaluate_student(student, tmp_path, eval_cfg=cfg)
    s = res["summary"]
    assert s["n"] == 3 and s["epoch"] == 2 and s["samples"] == 2 and set(s["maj_by_k"]) == {"1", "2"}
    greedy, _ = evaluation.generate_and_score(
        char_gpt2, char_tokenizer, load_task(task).split("test")[:3], task=task, template=TEMPLATE, batch_size=4,
        max_new_tokens=6,
    )  # fmt: skip
    assert s["accuracy"] == greedy["accuracy"]  # greedy accuracy is what it was without sampling
    preds = (tmp_path / "predictions" / "epoch_002.jsonl").read_text().splitlines()
    votes = [json.loads(x) for x in (tmp_path / "predictions" / "epoch_002.samples.jsonl").read_text().splitlines()]
    assert len(preds) == len(votes) == 3 and all(len(v["samples"]) == 2 for v in votes)
    assert s["maj_accuracy"] == np.mean([v["maj_correct"] for v in votes])
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == s
    with pytest.raises(ValueError, match="not a fine-tuned student"):
        evaluate_student(LoadedStudent(char_gpt2, char_tokenizer, "tiny", None), tmp_path)


@pytest.mark.parametrize("command", ["ask", "evaluate"])
def test_cli_rejects_bad_sample_settings_in_one_line(command, capsys, tmp_path):
    from ftcot_jax.cli import main

    extra = ["a question"] if command == "ask" else []
    assert main([command, str(tmp_path), *extra, "--samples", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ftcot {command}: error: --samples must be an integer >= 1, got 0"
    assert main([command, str(tmp_path), *extra, "--samples", "4", "--temperature", "0"]) == 2
    assert "--samples=4 with temperature 0.0" in capsys.readouterr().err
