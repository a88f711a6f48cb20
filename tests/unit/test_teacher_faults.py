"""Fault tests: the teacher against a fault-injecting OpenAI-compatible server on 127.0.0.1.

429 with Retry-After, 500/503, stalls past the timeout, connection resets, malformed JSON, no
choices, fewer choices than n, exhausted rate-limit headers. Every (sample, completion) pair ends
in the cache or in the failed list, and nothing is requested again once it was answered."""

import random
from collections import Counter

import pytest

from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.openai_backend import OpenAIBackend, RetryPolicy
from ftcot_jax.teacher.run import run_teach, select_items
from tests.helpers.fakes.fake_openai import FakeOpenAI

TASK = "single_eq"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


def _backend(fake, **kw):
    kw.setdefault("retry", FAST)
    return OpenAIBackend("fake-teacher", base_url=fake.base_url, timeout=0.8, rng=random.Random(0), **kw)


def _cache(root):
    return TeacherCache(root, task=TASK, teacher_model="fake-teacher", temperature=0.7)


def _run(fake, root, items, samples=2, concurrency=4, **kw):
    backend = _backend(fake, concurrency=concurrency)
    report = run_teach(
        backend, _cache(root), items, samples=samples, temperature=0.7, concurrency=concurrency, progress=False, **kw
    )
    return backend, report


def _accounted(root, items, samples):
    """Every pair is cached xor failed."""
    cache = _cache(root)
    done = cache.done_keys()
    failed = {(f["sample_index"], f["completion_index"]) for f in cache.failed()}
    want = {(it.sample_index, c) for it in items for c in range(samples)}
    assert done | failed == want and not (done & failed)
    return done, failed


def test_transient_faults_all_recover(tmp_path):
    items = select_items(TASK, "train", limit=12)
    q = [it.question for it in items]
    # (kind, question index) -> the faults of its first attempts; attempt k+1 is healthy.
    schedule = {
        ("reasoning", 0): ["429"],
        ("reasoning", 1): ["500", "503"],
        ("reasoning", 2): ["stall"],
        ("reasoning", 3): ["reset"],
        ("reasoning", 4): ["malformed"],
        ("reasoning", 5): ["no_choices"],
        ("reasoning", 6): ["few"],
        ("reasoning", 7): ["ratelimit"],
        ("answer", 8): ["reset", "500"],
        ("answer", 9): ["stall"],
        ("answer", 10): ["malformed", "429"],
        ("reasoning", 11): ["503", "reset", "few"],
    }

    def faults(kind, question, attempt):
        seq = schedule.get((kind, q.index(question)), [])
        return seq[attempt] if attempt < len(seq) else None

    with FakeOpenAI(faults=faults, stall_seconds=1.5) as fake:
        backend, report = _run(fake, tmp_path, items, samples=2)
        log = list(fake.log)
    assert report.answered == 24 and report.failed == 0
    done, failed = _accounted(tmp_path, items, 2)
    assert len(done) == 24 and not failed
    errs = backend.usage.errors
    assert errs["http_429"] == 2 and errs["http_500"] == 2 and errs["http_503"] == 2
    assert errs["timeout"] == 2 and errs["connection"] == 3 and errs["malformed_json"] == 2
    assert errs["bad_response"] == 1  # no choices
    # Nothing answered is asked again: per question exactly 2 rationales and 2 answers were delivered.
    for i, question in enumerate(q):
        sent_r = [e for e in log if e["question"] == question and e["kind"] == "reasoning" and e["sent"]]
        sent_a = [e for e in log if e["question"] == question and e["kind"] == "answer" and e["sent"]]
        assert sum(e["n_returned"] for e in sent_r) == 2, i
        assert len(sent_a) == 2, i
    # "few": n=2 answered with one choice -> one extra request with n=1 for the missing sample.
    assert [e["n"] for e in log if e["question"] == q[6] and e["kind"] == "reasoning"] == [2, 1]
    # Retry-After honoured: the retry of the 429'd request came >= 150 ms later.
    t = [e["t"] for e in log if e["question"] == q[0] and e["kind"] == "reasoning"]
    assert t[1] - t[0] >= 0.15


def test_rate_limit_headers_pause_all_workers(tmp_path):
    items = select_items(TASK, "train", limit=6)
    first = items[0].question

    def faults(kind, question, attempt):
        return "ratelimit" if (question == first and kind == "reasoning" and attempt == 0) else None

    with FakeOpenAI(faults=faults) as fake:
        _run(fake, tmp_path, items, samples=1, concurrency=1)
        log = list(fake.log)
    t_rl = next(e["t"] for e in log if e["fault"] == "ratelimit")
    nxt = min(e["t"] for e in log if e["t"] > t_rl)
    assert nxt - t_rl >= 0.3  # x-ratelimit-remaining-requests: 0, reset 300ms
    assert len(_cache(tmp_path).done_keys()) == 6


def test_persistent_failures_go_to_failed_list_and_are_retried_next_run(tmp_path):
    items = select_items(TASK, "train", limit=8)
    q = [it.question for it in items]
    always = {1: "500", 3: "malformed", 5: "stall"}  # reasoning always fails for these
    partial = 6  # its answers fail from the 3rd request on: 2 of 3 samples answered

    def faults(kind, question, attempt):
        i = q.index(question)
        if kind == "reasoning" and i in always:
            return always[i]
        if kind == "answer" and i == partial and attempt >= 2:
            return "503"
        return None

    with FakeOpenAI(faults=faults, stall_seconds=1.5) as fake:
        _, report = _run(fake, tmp_path, items, samples=3)
    assert report.failed == 3 * 3 + 1 and report.answered == 24 - 10
    done, failed = _accounted(tmp_path, items, 3)
    assert {i for i, _ in failed} == {items[i].sample_index for i in (1, 3, 5, 6)}
    assert sum(i == items[partial].sample_index for i, _ in done) == 2
    errors = {f["sample_index"]: f["error"] for f in _cache(tmp_path).failed()}
    assert "failed after 4 attempts" in errors[items[1].sample_index] and "HTTP 500" in errors[items[1].sample_index]
    assert "malformed JSON" in errors[items[3].sample_index]
    assert "no response within 0.8s" in errors[items[5].sample_index]
    assert "HTTP 503" in errors[items[partial].sample_index]
    # Next run, healthy server: only the failed pairs are requested; the failed list empties.
    with FakeOpenAI() as fake:
        _, report = _run(fake, tmp_path, items, samples=3)
        asked = Counter(e["question"] for e in fake.log if e["kind"] == "reasoning")
        answers = Counter(e["question"] for e in fake.log if e["kind"] == "answer")
    assert report.answered == 10 and report.failed == 0 and report.cached == 14
    assert set(asked) == {q[i] for i in (1, 3, 5, 6)}
    assert answers == Counter({q[1]: 3, q[3]: 3, q[5]: 3, q[6]: 1})
    done, failed = _accounted(tmp_path, items, 3)
    assert len(done) == 24 and not failed and _cache(tmp_path).failed() == []


def test_insufficient_quota_is_fatal_not_retried(tmp_path):
    items = select_items(TASK, "train", limit=10)
    with FakeOpenAI(faults=lambda kind, q, attempt: "quota") as fake:
        with pytest.raises(Exception, match="HTTP 429.*insufficient_quota"):
            _run(fake, tmp_path, items, samples=1, concurrency=1)
        assert len(fake.log) == 1


def test_fatal_error_stops_the_run(tmp_path):
    items = select_items(TASK, "train", limit=20)
    with FakeOpenAI(api_key="sk-expected") as fake:
        backend = OpenAIBackend("fake-teacher", base_url=fake.base_url, api_key="sk-wrong-key-123", retry=FAST)
        with pytest.raises(Exception, match="HTTP 401") as e:
            run_teach(backend, _cache(tmp_path), items, samples=1, temperature=0.7, concurrency=2, progress=False)
        assert getattr(e.value, "fatal", False)
        assert len(fake.log) <= 2  # stopped at once, not 20 identical failures
        assert "sk-wrong-key-123" not in str(e.value)


def test_dead_server_stops_the_run_early(tmp_path):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    items = select_items(TASK, "train", limit=40)
    backend = OpenAIBackend("fake-teacher", base_url=f"http://127.0.0.1:{port}/v1", retry=FAST, timeout=0.3)
    with pytest.raises(Exception, match="questions failed in a row; last error: .*connection error"):
        run_teach(
            backend,
            _cache(tmp_path),
            items,
            samples=1,
            temperature=0.7,
            concurrency=2,
            progress=False,
            max_failed_in_a_row=6,
        )
    failed = _cache(tmp_path).failed()
    assert 6 <= len(failed) <= 8  # the streak, plus what the other worker had in flight; the rest untouched
