"""Importing the reference's released teacher files (`B_<teacher>__C_zs_cot/D_<task>.json`) as they really are
(tests/helpers/teacher_files.py writes files of that shape)."""

from __future__ import annotations

import json

import pytest

from ftcot_jax.cli import main
from ftcot_jax.pipeline.curate import curate_cot
from ftcot_jax.tasks import load_task
from ftcot_jax.teacher import compat
from tests.helpers import teacher_files

TASK = "multiarith"


def released_file(path, **kw) -> dict:
    return teacher_files.released_file(path, TASK, **kw)


def test_a_released_file_imports_with_every_completion_and_its_teacher(tmp_path):
    f = tmp_path / "B_text-davinci-002__C_zs_cot" / f"D_{TASK}.json"
    released_file(f)
    cache, added, skipped = compat.import_file(f, tmp_path / "cache")
    assert (cache.task, cache.teacher_model, cache.temperature, added, skipped) == (
        TASK,
        "text-davinci-002",
        0.0,
        1 + 5 + 1 + 1,
        0,
    )
    recs = cache.records()
    per_question = {}
    for r in recs:
        per_question.setdefault(r.sample_index, []).append(r.completion_index)
    assert sorted(map(sorted, per_question.values())) == [[0], [0], [0], [0, 1, 2, 3, 4]]
    assert sorted({r.split for r in recs}) == ["test", "train"]
    # Fine-tune-CoT curation keeps completion 0 of each train question whose answer parses correct.
    cur = curate_cot(cache, completion_indices=[0])
    assert [s.rationale for s in cur.samples] == [
        f"Rationale 0 of question {i}." for i in load_task(TASK).split_indices("train")[:2]
    ]
    # Nothing is imported twice.
    assert compat.import_file(f, tmp_path / "cache")[1:] == (0, 8)


def test_the_temperature_comes_from_the_parameters(tmp_path):
    f = tmp_path / "D.json"
    released_file(f, parameters={"temperature": 0.7, "reasoning_temperature": 0.7}, completion_key="zs_cot_t70")
    assert compat.import_file(f, tmp_path / "cache")[0].temperature == 0.7
    released_file(f, parameters={"temperature": 0.5})
    assert compat.import_file(f, tmp_path / "cache2")[0].temperature == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_key": "ft_cot", "prediction_template": "ft_cot_token"}, "holds student completions"),
        ({"prediction_template": "ft_cot_token"}, "holds student completions"),
        ({"parameters": [0]}, "metadata.parameters is not a mapping"),
        ({"parameters": {"reasoning_temperature": "hot"}}, "metadata.parameters.reasoning_temperature is 'hot'"),
    ],
)
def test_student_predictions_and_bad_metadata_are_refused_naming_the_field(tmp_path, changes, message):
    f = tmp_path / "D_x.json"
    released_file(f, **changes)
    with pytest.raises(ValueError, match=message) as e:
        compat.import_file(f, tmp_path / "cache")
    assert str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("completion_index", "zero", r"\.completion_index is 'zero'; expected an integer"),
        ("reasoning_completion", 7, r"\.reasoning_completion is a int; expected text"),
        ("question", ["q"], r"\.question is a list; expected text"),
    ],
)
def test_a_malformed_completion_is_one_error_naming_file_and_field(tmp_path, field, value, message):
    f = tmp_path / "D_x.json"
    doc = released_file(f)
    first = next(iter(doc["data"].values()))[0]
    first[field] = value
    f.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as e:
        compat.import_file(f, tmp_path / "cache")
    assert str(e.value).startswith(str(f))


def test_cli_imports_a_release_folder_and_names_a_missing_path(tmp_path, capsys):
    folder = tmp_path / "B_text-davinci-002__C_zs_cot"
    released_file(folder / f"D_{TASK}.json")
    released_file(folder / "D_copy.json")  # same task: its completions are already cached
    assert main(["cache", "import", "--cache-dir", str(tmp_path / "c"), str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "imported 8 completions" in out[0] and "D_copy.json" in out[0]  # sorted by name
    assert "imported 0 completions" in out[1] and "8 already cached" in out[1]
    assert main(["cache", "import", "--cache-dir", str(tmp_path / "c"), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ftcot cache: error: completion file {tmp_path / 'nothing'} does not exist"
    (tmp_path / "empty").mkdir()
    assert main(["cache", "import", "--cache-dir", str(tmp_path / "c"), str(tmp_path / "empty")]) == 2
    assert "holds no D_<task>.json files" in capsys.readouterr().err
