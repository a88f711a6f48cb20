"""What a run asks its teacher: only the questions it uses (teacher.split=auto), the test split only on request,
cached answers never counted again, and the requests and cost shown before anything is asked (`--plan`)."""

from __future__ import annotations

import pytest

from ftcot_jax.cli import main
from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline.plan import STEPS_PER_SAMPLE, plan, teach_items
from ftcot_jax.tasks import load_task
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.pricing import Price
from tests.helpers.data import teacher_record as rec
from tests.helpers.pipeline import tiny_run_config

T = "last_letter_concatenation"


@pytest.fixture
def config(tmp_path, char_tokenizer_dir):
    def make(*overrides):
        path = tiny_run_config(tmp_path, tmp_path / "run", char_tokenizer_dir)
        return load_run_config(path, list(overrides))

    return make


def test_the_greedy_teacher_is_asked_only_the_train_questions_curation_keeps(config):
    train = load_task(T).split_indices("train")
    items = teach_items(config(), T, "greedy")  # curate.max_train_questions=8, teacher.split=auto (default)
    assert [(it.split, it.sample_index) for it in items] == [("train", i) for i in train[:8]]
    whole = teach_items(config("curate.max_train_questions=0"), T, "greedy")
    assert [it.sample_index for it in whole] == train
    paper = teach_items(config("teacher.split=all"), T, "greedy")
    assert len(paper) == len(load_task(T).split_indices("train")) + len(load_task(T).split_indices("test"))
    assert [it.sample_index for it in teach_items(config("teacher.split=all"), T, "diverse")] == train[:8]


def test_plan_counts_requests_cached_answers_and_cost(config, tmp_path):
    cfg = config("teacher.model=gpt-x", "curate.methods=[ft, ft_cot, diverse]", "curate.diverse_samples=[2, 3]")
    prices = {"gpt-x": Price(1.0, 2.0)}
    greedy, diverse = plan(cfg, prices=prices)
    assert (greedy.kind, greedy.questions, greedy.samples, greedy.cached) == ("greedy", 8, 1, 0)
    assert (diverse.kind, diverse.temperature, diverse.questions, diverse.samples) == ("diverse", 0.7, 8, 3)
    assert greedy.requests == 8 * STEPS_PER_SAMPLE and diverse.requests == 24 * STEPS_PER_SAMPLE
    assert greedy.completion_tokens == 8 * STEPS_PER_SAMPLE * cfg.teacher.max_tokens
    assert greedy.cost == pytest.approx((greedy.prompt_tokens * 1.0 + greedy.completion_tokens * 2.0) / 1e6)

    # Two answers already in the cache: neither is asked (nor paid) again.
    first = teach_items(cfg, T, "greedy")[:2]
    with TeacherCache(tmp_path / "cache", task=T, teacher_model="gpt-x", temperature=0.0) as cache:
        for it in first:
            cache.append(rec(it.sample_index, task=T, model="gpt-x", temperature=0.0))
    again = plan(cfg, prices=prices)[0]
    assert (again.cached, again.requests) == (2, 6 * STEPS_PER_SAMPLE)
    assert again.cost == pytest.approx(greedy.cost * 6 / 8, rel=0.05)
    assert plan(config("teacher.model=unpriced-model"))[0].cost is None
    assert plan(config())[0].cost == 0.0  # the reference teacher is a program
    assert plan(config("curate.methods=[ft]")) == []


def test_cli_plan_prints_the_table_and_says_when_test_questions_are_asked(config, tmp_path, capsys):
    path = tiny_run_config(tmp_path, tmp_path / "run", tmp_path / "tok")
    assert main(["run", path, "teacher.model=gpt-4o-mini", "teacher.split=all", "--plan"]) == 0
    out = capsys.readouterr().out
    n_test = len(load_task(T).split_indices("test"))
    assert f"| {T} | greedy | 0 |" in out and f"({n_test}) |" in out
    assert "requests to gpt-4o-mini, at most $" in out
    assert f"{n_test} of the questions are test questions" in out
    assert main(["run", path, "teacher.model=unpriced-model", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "cost unknown" in out and "test questions" not in out
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_program_or_an_imported_teacher_makes_no_requests(config, capsys, tmp_path):
    program = plan(config())[0]
    assert (program.source, program.requests, program.prompt_tokens, program.cost) == ("program", 0, 0, 0.0)
    released = tmp_path / "released"
    imported = plan(config("teacher.model=text-davinci-002", f"teacher.import_from={released}"))[0]
    assert (imported.source, imported.requests, imported.cost) == ("import", 0, 0.0)
    assert imported.questions == 8  # the questions it will use are still counted
    path = tiny_run_config(tmp_path, tmp_path / "run", tmp_path)
    assert main(["run", path, "teacher.model=text-davinci-002", f"teacher.import_from={released}", "--plan"]) == 0
    assert f"no requests: the rationales are imported from {released}" in capsys.readouterr().out
