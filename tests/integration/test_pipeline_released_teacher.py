"""`ftcot run` on a released teacher (`teacher.import_from`): no endpoint is asked, the task's file is imported
into the run's cache, curation keeps completion 0 of the correct train questions, and the teach stage's hash
covers the file's bytes (an edited file reruns teach; the same file elsewhere does not)."""

from __future__ import annotations

import json
import shutil

import pytest

from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline.run import run as run_pipeline
from ftcot_jax.samples import read_samples
from ftcot_jax.tasks import load_task
from tests.helpers.pipeline import tiny_run_config
from tests.helpers.teacher_files import released_file

T = "last_letter_concatenation"


def _config(tmp_path, tokenizer_dir, folder):
    return tiny_run_config(
        tmp_path,
        tmp_path / "run",
        tokenizer_dir,
        teacher={"model": "text-davinci-002", "import_from": str(folder), "cache_dir": str(tmp_path / "cache")},
        curate={"methods": ["ft_cot"]},
    )


def _run(path, *overrides):
    cfg = load_run_config(path, list(overrides))
    log = []
    return run_pipeline(cfg, log=log.append), log


def test_a_run_on_released_files_asks_no_endpoint_and_reruns_teach_when_a_file_changes(
    tmp_path, char_tokenizer_dir, monkeypatch
):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens: a request would fail
    folder = tmp_path / "B_text-davinci-002__C_zs_cot"
    released_file(folder / f"D_{T}.json", T, per_sample=(1, 5, 1, 1), correct=(True, True, False, True), n_test=2)
    path = _config(tmp_path, char_tokenizer_dir, folder)
    res, log = _run(path, "eval.zero_shot=false", "train.epochs=1")
    assert any("imported 10 completions" in m for m in log)
    samples = read_samples(res.run_dir / "samples" / f"{T}__ft_cot.tfrecord")
    train = load_task(T).split_indices("train")
    assert [(s.sample_index, s.completion_index) for s in samples] == [(train[0], 0), (train[1], 0), (train[3], 0)]
    assert json.loads((res.run_dir / "eval" / T / "ft_cot.json").read_text())["method"] == "ft_cot"

    # The same bytes elsewhere: nothing is taught, curated or trained again (the report, cheap, is rewritten).
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    res2, _ = _run(path, "eval.zero_shot=false", "train.epochs=1", f"teacher.import_from={moved}")
    assert [sid for sid, e in res2.events if e == "ran"] == ["report"]

    # An edited file: teach reruns (and what depends on it).
    released_file(moved / f"D_{T}.json", T, per_sample=(1, 1), correct=(True, True), n_test=2)
    res3, _ = _run(path, "eval.zero_shot=false", "train.epochs=1", f"teacher.import_from={moved}")
    assert f"teach/{T}/greedy" in {sid for sid, e in res3.events if e == "ran"}


def test_a_file_of_another_teacher_is_one_error_naming_both(tmp_path, char_tokenizer_dir):
    folder = tmp_path / "B_x__C_zs_cot"
    released_file(folder / f"D_{T}.json", T, base_model="code-davinci-002")
    path = _config(tmp_path, char_tokenizer_dir, folder)
    with pytest.raises(
        ValueError,
        match=r"holds last_letter_concatenation by code-davinci-002 at T=0; .*"
        r"teacher.model=text-davinci-002",
    ):
        _run(path, "eval.zero_shot=false")
    with pytest.raises(FileNotFoundError, match="elsewhere does not exist"):
        _run(path, f"teacher.import_from={tmp_path / 'elsewhere'}")
