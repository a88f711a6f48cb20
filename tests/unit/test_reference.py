"""The offline `reference` teacher (ftcot_jax/teacher/reference.py and the rationale writers it calls)."""

import asyncio
import re

import pytest

from ftcot_jax import prompts
from ftcot_jax.pipeline.curate import curate_cot
from ftcot_jax.scoring import check_answer
from ftcot_jax.tasks import load_task
from ftcot_jax.tasks.rationale_sources import EQUATION, SUPPORTED_TASKS, check_supported
from ftcot_jax.teacher import equations, simulators
from ftcot_jax.teacher import reference as ref
from ftcot_jax.teacher.backend import TeacherError, TeachItem
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.rationale import RationaleError, fmt
from ftcot_jax.teacher.run import run_teach

# Train rows whose annotation disagrees with the gold answer (checked by hand against the question):
# the teacher answers what the equation gives, and the zs_cot filter must reject it.
KNOWN_DATA_ERRORS = {
    "single_eq": {
        191: "unknown",
        226: "22.83",
        255: "36.42",
        317: "0.5",
        320: "1.3",
        332: "1",
        408: "100",
        462: "136",
        482: "5.7142857143",
        485: "0.26",
    },
    "addsub": {263: "unknown"},  # 'X = 0.32 = 0.21'
    "svamp": {679: "5"},  # "4 apples, picked 2, 3 new grew" -> 5, gold 1.0
}


def _teach(backend, task, part, ex, indices=(0,), temperature=0.0):
    item = TeachItem(task, part, ex.sample_index, ex.question, ex.answer)
    return asyncio.run(backend.teach(item, list(indices), temperature))


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_answers_parse_to_gold_on_the_whole_train_split(task):
    backend = ref.ReferenceBackend()
    t = load_task(task)
    # AQuA's train file is not bundled (fetched online on first use); without it the test rows stand in.
    from ftcot_jax.tasks import aqua

    part = "test" if task == "aqua" and not aqua.train_path().exists() else "train"
    examples = t.split(part)
    item_list = [TeachItem(task, part, ex.sample_index, ex.question, ex.answer) for ex in examples]

    async def all_records():
        return [(await backend.teach(it, [0], 0.0))[0] for it in item_list]

    wrong = {}
    for ex, rec in zip(examples, asyncio.run(all_records()), strict=True):
        assert rec.rationale.strip() and rec.protocol == "reference" and rec.teacher_model == "reference"
        assert rec.answer_prompt == rec.reasoning_prompt + rec.rationale + "\nTherefore, the answer is"
        if not check_answer(task, rec.answer_text, ex.answer, "zs_cot"):
            wrong[ex.sample_index] = rec.answer_text.strip().rstrip(".")
    assert wrong == KNOWN_DATA_ERRORS.get(task, {})
    assert len(wrong) <= 0.03 * len(examples)


@pytest.mark.parametrize("task", ["date_understanding", "commonsense_qa"])
def test_unsupported_tasks_are_refused_by_name(task):
    with pytest.raises(ValueError, match=f"cannot teach '{task}'"):
        check_supported(task)
    ex = load_task(task).split("train")[0]
    with pytest.raises(TeacherError, match=f"cannot teach '{task}'") as e:
        _teach(ref.ReferenceBackend(), task, "train", ex)
    assert e.value.fatal
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        check_supported("nope")


def test_a_question_not_in_the_dataset_fails():
    with pytest.raises(TeacherError, match="question differs"):
        asyncio.run(ref.ReferenceBackend().teach(TeachItem("multiarith", "train", 0, "What?", "1"), [0], 0.0))


@pytest.mark.parametrize(
    "equation,value",
    [
        ("X=((32.0+42.0)-35.0)", 39),
        ("70-x=27", 43),
        ("22+x=55", 33),
        ("(x/4)+2=5", 12),
        ("3*4=x*2", 6),
        ("5 = 3 + x", 2),
        ("2+(5*x)=27", 5),
        ("(4*3)+1+x=20", 7),
        ("x-4-6=1", 11),
        ("( 76.0 - 25.0 )", 51),
        ("12/x=4", 3),
        ("10-(2*x)=4", 3),
        ("X = 0.32 + 0.21", 0.53),
    ],
)
def test_equation_rationales(equation, value):
    text, got = equations.equation_rationale(equation)
    assert got == pytest.approx(value)
    assert text.endswith(f"= {fmt(value)}.")


@pytest.mark.parametrize("equation", ["9=3+6", "X = 1 = 2", "x*x=4", "x=y+1", "x=2**3"])
def test_bad_equations_raise(equation):
    with pytest.raises(RationaleError):
        equations.equation_rationale(equation)


def test_program_rationales():
    text, ans = simulators.coin_flip_rationale(
        "A coin is heads up. Ka flips the coin. Bo does not flip the coin. "
        'Is the coin still heads up? Note that "flip" here means "reverse".'
    )
    assert ans == "no" and "Ka flips the coin, so it is now tails up." in text
    text, ans = simulators.last_letter_rationale(
        'Take the last letters of each words in "Ira Paola Jose Antonio Maria" and concatenate them.', "aaoa"
    )
    assert ans == "aaoa" and 'The last letter of "Jose Antonio" is "o", so far "aao".' in text
    assert text.endswith('The last letter of "Maria" is "a", so far "aaoa".')
    q = (
        "Alice, Bob, and Claire are playing a game. At the start of the game, they are each holding a ball: Alice "
        "has a orange ball, Bob has a white ball, and Claire has a blue ball. \n\nAs the game progresses, pairs of "
        "players trade balls. First, Alice and Bob swap balls. Then, Bob and Claire swap balls. Finally, Alice and "
        "Bob swap balls. At the end of the game, Alice has the \nWhich choice is true? Answer choices: (A) orange "
        "ball, (B) white ball, (C) blue ball."
    )
    text, ans = simulators.tracking_rationale(q)
    assert ans == "C" and text.endswith("Alice has blue ball, which is choice (C).")


def test_gsm8k_calculator_annotations_are_removed():
    ex = load_task("gsm8k").example(0)
    assert "<<" in ex.rationale
    (rec,) = _teach(ref.ReferenceBackend(), "gsm8k", "train", ex)
    assert "<<" not in rec.rationale and ">>" not in rec.rationale


def test_writes_the_cache_through_run_teach(tmp_path):
    t = load_task("coin_flip")
    items = [TeachItem("coin_flip", "train", ex.sample_index, ex.question, ex.answer) for ex in t.split("train")[:6]]
    backend = ref.ReferenceBackend()
    with TeacherCache(tmp_path, task="coin_flip", teacher_model=backend.model, temperature=0.7) as cache:
        report = run_teach(backend, cache, items, samples=2, temperature=0.7, progress=False)
    assert (report.answered, report.failed) == (12, 0)
    recs = TeacherCache(tmp_path, task="coin_flip", teacher_model="reference", temperature=0.7).records()
    assert [r.key for r in recs] == sorted((it.sample_index, c) for it in items for c in (0, 1))
    assert all(r.temperature == 0.7 and r.endpoint == ref.ENDPOINT for r in recs)
    with TeacherCache(tmp_path, task="coin_flip", teacher_model="reference", temperature=0.7) as cache:
        again = run_teach(backend, cache, items, samples=2, temperature=0.7, progress=False)
    assert (again.cached, again.answered) == (12, 0)  # nothing is asked twice


# --- samples: the stand-in for a T=0.7 teacher's completions (diverse reasoning) ----------------------

VARIANTS = range(6)
DIFFERENT = 4  # variants 0..3 of every question are pairwise different


def _conclusion(task, rationale):
    """What a rationale of our own (equations, programs) concludes, read off its last statement."""
    if task in EQUATION:
        return float(re.findall(r"-?\d+(?:\.\d+)?", rationale.replace(",", ""))[-1])
    if task == "last_letter_concatenation":
        return re.findall(r'"([^"]*)"', rationale)[-1]
    if task == "coin_flip":
        return {"heads": "yes", "tails": "no"}[re.findall(r"heads|tails", rationale)[-1]]
    if task == "tracking_shuffled_objects":
        return re.findall(r"\(([ABC])\)", rationale)[-1]
    return None


def _units(task, text):
    if task == "strategy_qa":
        return [u for u in re.split(r"(?<=[.!?])\s+", text) if u]
    return [u.strip() for u in text.split("\n") if u.strip()]


@pytest.mark.parametrize("task", SUPPORTED_TASKS)
def test_variants_are_correct_and_different(task):
    backend = ref.ReferenceBackend()
    t = load_task(task)
    part = "test" if task == "aqua" else "train"  # AQuA's train file is not bundled
    examples = t.split(part)
    known = KNOWN_DATA_ERRORS.get(task, {})
    for ex in examples:
        gold = ex.answer.strip()
        texts = []
        for k in VARIANTS:
            text, answer = backend.solve(task, ex.sample_index, ex.question, gold, k)
            assert text.strip(), (task, ex.sample_index, k)
            if ex.sample_index in known:  # a data error stays the same error in every variant
                assert answer.strip(".") == known[ex.sample_index]
                continue
            # the step-2 answer (curation's filter) and the student's label (evaluation's rule) parse to gold
            assert check_answer(task, ref._answer_text(task, answer), gold, "zs_cot"), (task, k, answer)
            # (a few AQuA gold rationales write "--->" themselves; the variants add none)
            assert ("-->" in text) == ("-->" in (texts[0] if texts else text)), (task, ex.sample_index, k)
            label = prompts.finetune_label("ft_cot_token", "decoder", gold, text)
            assert "-->" in text or check_answer(task, label, gold, "ft_cot_token"), (task, k, label)
            concl = _conclusion(task, text)
            if task in EQUATION:
                assert concl == pytest.approx(float(gold)), (task, ex.sample_index, k, text)
            elif concl is not None:
                assert concl == gold, (task, ex.sample_index, k, text)
            else:  # a gold rationale: every line (fact) is kept, only the presentation changes
                body = text.replace("\n", " ")
                assert all(u in body for u in _units(task, texts[0] if texts else text)), (task, k, text)
            texts.append(text)
        if texts:
            assert len(set(texts[:DIFFERENT])) == DIFFERENT, (task, ex.sample_index, texts[:DIFFERENT])


def test_samples_by_temperature_and_index():
    """Completion 0 is the greedy rationale at any temperature; at T=0 every index repeats it (greedy
    decoding is deterministic); above 0, index k is variant k, the same on every call."""
    ex = load_task("last_letter_concatenation").split("train")[5]
    greedy = _teach(ref.ReferenceBackend(), "last_letter_concatenation", "train", ex, range(4), 0.0)
    sampled = _teach(ref.ReferenceBackend(), "last_letter_concatenation", "train", ex, range(4), 0.7)
    again = _teach(ref.ReferenceBackend(), "last_letter_concatenation", "train", ex, [3, 1], 0.7)
    assert {r.rationale for r in greedy} == {sampled[0].rationale}
    assert [r.completion_index for r in sampled] == [0, 1, 2, 3]
    assert len({r.rationale for r in sampled}) == 4
    assert [r.rationale for r in again] == [sampled[3].rationale, sampled[1].rationale]
    assert all(r.answer_prompt == r.reasoning_prompt + r.rationale + prompts.ANSWER_TRIGGER for r in sampled)
    with pytest.raises(ValueError, match="variant must be >= 0"):
        ref.ReferenceBackend().solve("coin_flip", ex.sample_index, ex.question, ex.answer, -1)


@pytest.mark.parametrize(
    "equation,value",
    [("X=((32.0+42.0)-35.0)", 39), ("70-x=27", 43), ("(x/4)+2=5", 12), ("12/x=4", 3), ("X = 7", 7), ("10-(2*x)=4", 3)],
)
def test_equation_variants_end_on_the_value(equation, value):
    texts = set()
    for k in range(1, 4):
        text, got = equations.equation_rationale(equation, k, seed="s")
        assert got == pytest.approx(value)
        assert float(re.findall(r"-?\d+(?:\.\d+)?", text)[-1]) == pytest.approx(value), text
        texts.add(text)
    assert len(texts) == 3


def test_diverse_curation_gets_d_different_rationales(tmp_path):
    """teach (T=0.7, 4 samples) -> curate_cot(range(D)): D correct, different rationales per question."""
    t = load_task("last_letter_concatenation")
    items = [TeachItem(t.name, "train", ex.sample_index, ex.question, ex.answer) for ex in t.split("train")[:5]]
    backend = ref.ReferenceBackend()
    with TeacherCache(tmp_path, task=t.name, teacher_model="reference", temperature=0.7) as cache:
        run_teach(backend, cache, items, samples=4, temperature=0.7, progress=False)
    cache = TeacherCache(tmp_path, task=t.name, teacher_model="reference", temperature=0.7)
    for d in (1, 2, 4):
        cur = curate_cot(cache, completion_indices=list(range(d)), method="diverse")
        assert cur.kept == 5 * d  # (the other train questions are not in the cache)
        for it in items:
            texts = [s.rationale for s in cur.samples if s.sample_index == it.sample_index]
            assert len(set(texts)) == d
