"""The teach stage with the reference program as teacher: a new version of the program's rationales reruns the
stage and replaces what an older version left in the cache; the same version keeps its answers (a run killed
while teaching resumes without asking again)."""

from __future__ import annotations

from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline import run as pipeline_run
from ftcot_jax.pipeline.plan import cache_root, teach_items
from ftcot_jax.pipeline.stages import teacher_hash
from ftcot_jax.teacher import reference
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.stage import PROGRAM_VERSION_FILE
from tests.helpers.data import teacher_record
from tests.helpers.pipeline import tiny_run_config

T = "last_letter_concatenation"


def test_a_new_program_version_reruns_teach_and_replaces_older_answers(tmp_path, char_tokenizer_dir, monkeypatch):
    cfg = load_run_config(tiny_run_config(tmp_path, tmp_path / "run", char_tokenizer_dir))
    logs = []
    cache_dir = pipeline_run.teach(cfg, T, "ft_cot", logs.append)
    assert "0 already cached, 8 answered" in logs[-1]
    marker = cache_dir / PROGRAM_VERSION_FILE
    assert marker.read_text().strip() == str(reference.VERSION)
    current = {r.key: r.rationale for r in TeacherCache.from_dir(cache_dir).records()}
    h = teacher_hash(cfg, T, "ft_cot")

    # the same version (a rerun, or a run killed while teaching): what is cached is kept, nothing asked again
    pipeline_run.teach(cfg, T, "ft_cot", logs.append)
    assert "8 already cached, 0 answered" in logs[-1]

    # an older version's text in the cache (no marker: before versions existed): dropped and rewritten
    marker.unlink()
    sample = next(iter(current))
    with TeacherCache.from_dir(cache_dir) as cache:
        old = {r.key: r for r in cache.records()}
    cache_dir_files = sorted(p.name for p in cache_dir.iterdir())
    assert cache_dir_files  # the older cache is there before the rerun
    pipeline_run.teach(cfg, T, "ft_cot", logs.append)
    assert "0 already cached, 8 answered" in logs[-1] and marker.read_text().strip() == str(reference.VERSION)
    assert {r.key: r.rationale for r in TeacherCache.from_dir(cache_dir).records()} == current
    assert old[sample].rationale == current[sample]

    # a new version changes the stage hash (so `ftcot run` reruns teach and what follows) and drops the cache
    monkeypatch.setattr(reference, "VERSION", reference.VERSION + 1)
    assert teacher_hash(cfg, T, "ft_cot") != h
    pipeline_run.teach(cfg, T, "ft_cot", logs.append)
    assert "0 already cached, 8 answered" in logs[-1] and marker.read_text().strip() == str(reference.VERSION)


def test_an_llm_teachers_cache_is_kept_as_it_is(tmp_path, char_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = load_run_config(
        tiny_run_config(tmp_path, tmp_path / "run", char_tokenizer_dir),
        ["teacher.model=gpt-x", "teacher.endpoint=http://127.0.0.1:9/v1"],
    )
    with TeacherCache(cache_root(cfg), task=T, teacher_model="gpt-x", temperature=0.0) as cache:
        for it in teach_items(cfg, T, "greedy"):
            cache.append(teacher_record(it.sample_index, task=T, model="gpt-x", temperature=0.0))
    logs = []
    pipeline_run.teach(cfg, T, "ft_cot", logs.append)  # every answer cached: the dead endpoint is never asked
    assert "8 already cached, 0 answered" in logs[-1]
    assert not (cache.path / PROGRAM_VERSION_FILE).exists()
    assert len(TeacherCache.from_dir(cache.path).records()) == 8
