"""`ftcot teach` against the fake OpenAI-compatible server: exact prompts and messages, n handling,
resume without re-requests, API-key hygiene, pricing, and the Batch API mode (incl. resume)."""

import asyncio
import json
import random

import pytest

from ftcot_jax import prompts
from ftcot_jax.cli import main
from ftcot_jax.teacher import pricing
from ftcot_jax.teacher.batch import BatchOptions, BatchPending, BatchRun
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.openai_backend import (
    OpenAIBackend,
    RetryPolicy,
    parse_duration,
    public_endpoint,
    retry_after_seconds,
)
from ftcot_jax.teacher.run import run_teach, select_items
from tests.helpers.fakes.fake_openai import FakeOpenAI

KEY = "sk-FTCOTTEST-9b7e1c5a2d-DO-NOT-LOG"
TASK = "single_eq"


def _cache(root, model="gpt-4o-mini", temperature=0.7):
    return TeacherCache(root, task=TASK, teacher_model=model, temperature=temperature)


def _teach(fake, tmp_path, *extra, model="gpt-4o-mini"):
    return main(
        [
            "teach",
            "--task",
            TASK,
            "--model",
            model,
            "--base-url",
            fake.base_url,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture
def keyed_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# --- units ----------------------------------------------------------------------------------


def test_header_parsing():
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("1.5") == 1.5
    assert parse_duration("soon") is None
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({}) is None
    assert public_endpoint("https://user:pw@host.example:8443/v1/?api-key=abc") == "https://host.example:8443/v1"


def test_pricing(tmp_path):
    assert pricing.estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert pricing.estimate_cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert pricing.estimate_cost("gpt-4o-mini", 2_000_000, 0, batch=True) == pytest.approx(0.15)
    assert pricing.estimate_cost("my-local-llama", 10, 10) is None  # unknown, not free
    assert pricing.format_cost(None) == "unknown"
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"my-local-llama": {"input": 1.0, "output": 2.0}}))
    table = pricing.load_prices(f)
    assert pricing.estimate_cost("my-local-llama", 1_000_000, 1_000_000, table=table) == pytest.approx(3.0)
    f.write_text(json.dumps({"m": {"input": 1.0}}))
    with pytest.raises(ValueError, match="'m' needs 'input' and 'output'"):
        pricing.load_prices(f)


# --- live protocols ---------------------------------------------------------------------------


def test_completions_protocol_exact_prompts_and_resume(tmp_path, keyed_env, capsys):
    items = select_items(TASK, "train", limit=4)
    with FakeOpenAI(api_key=KEY) as fake:
        assert _teach(fake, tmp_path, "--split", "train", "--limit", "4", "--samples", "3", "--temperature", "0.7") == 0
        reasoning, answers = fake.requests("reasoning"), fake.requests("answer")
        assert len(reasoning) == 4 and len(answers) == 12  # n=3 honoured: one step-1 request per question
        recs = _cache(tmp_path / "cache").records()
        assert [(r.sample_index, r.completion_index) for r in recs] == [
            (it.sample_index, c) for it in items for c in range(3)
        ]
        for r in recs:
            step1 = prompts.zs_cot_step1_prompt(r.question)
            assert r.reasoning_prompt == step1 and r.protocol == "completions"
            assert r.answer_prompt == prompts.zs_cot_step2_prompt(step1, r.rationale)
            assert r.endpoint == fake.base_url and r.temperature == 0.7 and r.seed == -1
            assert r.prompt_tokens > 0 and r.completion_tokens > 0
        # Exact request bodies: the reference's zs_cot prompts, stop "END", max_tokens 128, step 2 greedy.
        bodies = {e["question"]: e for e in reasoning}
        assert {it.question for it in items} == set(bodies)
        assert all(e["n"] == 3 for e in reasoning) and all(e["n"] == 1 for e in answers)
        out = capsys.readouterr().out
        assert "12 answered, 0 failed" in out and "estimated cost $" in out
        # Rerun: everything is cached, nothing is requested again.
        n = len(fake.log)
        assert _teach(fake, tmp_path, "--split", "train", "--limit", "4", "--samples", "3", "--temperature", "0.7") == 0
        assert len(fake.log) == n
        assert "12 already cached, 0 answered" in capsys.readouterr().out


class _Recorder(FakeOpenAI):
    """Also keeps every request body, to compare with the exact documented prompts."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.bodies = []

    def complete(self, path, body, *, fault=None):
        self.bodies.append((path, body))
        return super().complete(path, body, fault=fault)


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_request_bodies(tmp_path, keyed_env, protocol):
    item = select_items(TASK, "train", limit=1)[0]
    with _Recorder(api_key=KEY) as fake:
        assert _teach(fake, tmp_path, "--split", "train", "--limit", "1", "--protocol", protocol, "--seed", "5") == 0
        (p1, b1), (p2, b2) = fake.bodies
    rec = TeacherCache(tmp_path / "cache", task=TASK, teacher_model="gpt-4o-mini", temperature=0.0).records()[0]
    step1 = prompts.zs_cot_step1_prompt(item.question)
    common1 = {"model": "gpt-4o-mini", "temperature": 0.0, "n": 1, "stop": ["END"], "seed": 5}
    common2 = {"model": "gpt-4o-mini", "temperature": 0.0, "n": 1, "stop": ["END"]}
    if protocol == "completions":
        assert p1 == p2 == "/v1/completions"
        assert b1 == {**common1, "prompt": step1, "max_tokens": 128}
        assert b2 == {**common2, "prompt": prompts.zs_cot_step2_prompt(step1, rec.rationale), "max_tokens": 128}
    else:
        assert p1 == p2 == "/v1/chat/completions"
        assert b1 == {**common1, "messages": [{"role": "user", "content": step1}], "max_completion_tokens": 128}
        assert b2 == {
            **common2,
            "max_completion_tokens": 128,
            "messages": [
                {"role": "user", "content": step1},
                {"role": "assistant", "content": rec.rationale},
                {"role": "user", "content": "Therefore, the answer is"},
            ],
        }
    assert rec.protocol == protocol and rec.seed == 5 and rec.answer_text.strip()


def test_server_ignoring_n_gets_separate_requests(tmp_path, keyed_env):
    items = select_items(TASK, "train", limit=3)
    with FakeOpenAI(honour_n=False) as fake:
        backend = OpenAIBackend("gpt-4o-mini", base_url=fake.base_url, concurrency=2)
        report = run_teach(backend, _cache(tmp_path), items, samples=4, temperature=0.7, concurrency=2, progress=False)
        assert report.answered == 12 and report.failed == 0
        assert backend.n_supported is False
        # First question: one n=4 request (1 choice back) + 3 separate n=1 requests; later ones: 4 x n=1.
        per_q = [[e["n"] for e in fake.requests("reasoning", it.question)] for it in items]
        assert max(sum(per_q, [])) == 4
        assert all(sorted(x) in ([1, 1, 1, 4], [1, 1, 1, 1]) for x in per_q)
        rats = [r.rationale for r in _cache(tmp_path).records()]
        assert len(set(rats)) == 12  # four different samples per question


def test_seed_per_completion_when_n_ignored(tmp_path, keyed_env):
    item = select_items(TASK, "train", limit=1)
    with FakeOpenAI(honour_n=False) as fake:
        backend = OpenAIBackend("m", base_url=fake.base_url, seed=100)
        run_teach(backend, _cache(tmp_path, model="m"), item, samples=3, temperature=0.7, progress=False)
        seeds = sorted(e["seed"] for e in fake.requests("reasoning"))
    assert seeds == [100, 101, 102]  # repeated requests with one seed would return identical samples
    assert sorted(r.seed for r in _cache(tmp_path, model="m").records()) == [100, 101, 102]


# --- key hygiene ------------------------------------------------------------------------------


def _grep_tree(root, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_api_key_never_leaks(tmp_path, keyed_env, capsys):
    items = select_items(TASK, "train", limit=3)
    bad_q = items[1].question

    def faults(kind, q, attempt):
        return "echo_auth" if q == bad_q else None  # the server echoes our Authorization header back

    with FakeOpenAI(api_key=KEY, faults=faults) as fake:
        rc = _teach(fake, tmp_path, "--split", "train", "--limit", "3", "--max-attempts", "2")
        assert rc == 1  # one question failed: exit code says so
        assert fake.requests()[0]["auth"] == f"Bearer {KEY}"  # the key did reach the server
    out = capsys.readouterr()
    cache = TeacherCache(tmp_path / "cache", task=TASK, teacher_model="gpt-4o-mini", temperature=0.0)
    failed = cache.failed()
    assert [f["sample_index"] for f in failed] == [items[1].sample_index]
    assert "HTTP 500" in failed[0]["error"] and "***" in failed[0]["error"]
    assert KEY not in out.out + out.err + json.dumps(failed)
    # Exports and reports of the cache (records helper's `ftcot cache`) carry no key either.
    root = str(tmp_path / "cache")
    assert main(["cache", "export", "--cache-dir", root, "--out", str(tmp_path / "export")]) == 0
    assert main(["cache", "inspect", "--cache-dir", root]) == 0
    assert any((tmp_path / "export").rglob("*.json"))
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    assert _grep_tree(tmp_path, KEY) == []
    assert _grep_tree(tmp_path, KEY[10:30]) == []
    # A wrong key is fatal: one clear line, no traceback, and the key is not in it.
    with FakeOpenAI(api_key="sk-the-right-one") as fake:
        assert _teach(fake, tmp_path, "--split", "train", "--limit", "3") == 2  # retries the failed one
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Traceback" not in err and KEY not in err


# --- Batch API --------------------------------------------------------------------------------


def _batch(fake, root, items, *, samples=2, temperature=0.7, max_wait=None):
    backend = OpenAIBackend("gpt-4o-mini", base_url=fake.base_url, retry=RetryPolicy(base_delay=0.01))
    cache = _cache(root, temperature=temperature)
    run = BatchRun(
        backend, cache, cache.path / "batch", BatchOptions(poll_interval=0.01, max_wait=max_wait, progress=False)
    )

    async def go():
        try:
            return await run.run(items, samples=samples, temperature=temperature)
        finally:
            await backend.aclose()

    return asyncio.run(go()), cache


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_batch_mode_via_cli(tmp_path, keyed_env, capsys, protocol):
    url = "/v1/completions" if protocol == "completions" else "/v1/chat/completions"
    with FakeOpenAI(api_key=KEY) as fake:
        assert (
            _teach(
                fake,
                tmp_path,
                "--batch",
                "--poll-interval",
                "0.01",
                "--split",
                "train",
                "--protocol",
                protocol,
                "--limit",
                "5",
                "--samples",
                "2",
                "--temperature",
                "0.7",
            )
            == 0
        )
        assert fake.batch_creates == 2  # reasoning, then answers
        assert {b["endpoint"] for b in fake.batches.values()} == {url}
        reasoning, answer = sorted(fake.batches.values(), key=lambda b: int(b["id"].split("-")[1]))
        lines = [json.loads(x) for x in fake.files[reasoning["input_file_id"]].decode().splitlines()]
        assert {x["url"] for x in lines} == {url} and all(x["body"]["n"] == 2 for x in lines)
        assert all(x["body"]["temperature"] == 0.7 for x in lines)
        lines = [json.loads(x) for x in fake.files[answer["input_file_id"]].decode().splitlines()]
        assert len(lines) == 10 and all(x["body"]["temperature"] == 0.0 and x["body"]["n"] == 1 for x in lines)
        if protocol == "chat":
            assert all([m["role"] for m in x["body"]["messages"]] == ["user", "assistant", "user"] for x in lines)
    recs = _cache(tmp_path / "cache").records()
    assert len(recs) == 10 and {r.protocol for r in recs} == {"batch"}
    assert all(r.answer_prompt == prompts.zs_cot_step2_prompt(r.reasoning_prompt, r.rationale) for r in recs)
    out = capsys.readouterr().out
    assert "10 answered" in out and "estimated cost $" in out
    assert _grep_tree(tmp_path, KEY) == []


def test_batch_resumes_polling_instead_of_paying_again(tmp_path, keyed_env):
    items = select_items(TASK, "train", limit=4)
    with FakeOpenAI(batch_polls=10**9) as fake:  # never finishes while we poll
        with pytest.raises(BatchPending, match="rerun the same command"):
            _batch(fake, tmp_path, items, max_wait=0.05)
        assert fake.batch_creates == 1
        state = json.loads((_cache(tmp_path).path / "batch" / "state.json").read_text())
        assert state["batches"]["reasoning"]["batch_id"] == "batch-2"
        fake.batch_polls = 3  # the server finishes it now; a rerun must resume it, not create another
        report, cache = _batch(fake, tmp_path, items)
        assert fake.batch_creates == 2  # the resumed reasoning batch + the answer batch
        assert report.answered == 8 and report.failed == 0
        assert len(cache.records()) == 8
        # Finished: the next run has nothing to do and submits nothing.
        report, _ = _batch(fake, tmp_path, items)
        assert report.cached == 8 and fake.batch_creates == 2


def test_batch_fewer_choices_and_failed_lines(tmp_path, keyed_env):
    items = select_items(TASK, "train", limit=4)
    bad = items[2].question

    def faults(kind, q, attempt):
        return "500" if (kind == "answer" and q == bad) else None

    with FakeOpenAI(honour_n=False, faults=faults) as fake:
        report, cache = _batch(fake, tmp_path, items, samples=3)
        assert fake.batch_creates == 3  # reasoning (n=3 -> 1 choice), reasoning_rest (n=1 each), answer
        assert report.answered == 9 and report.failed == 3
    failed = cache.failed()
    assert [(f["sample_index"], f["completion_index"]) for f in failed] == [
        (items[2].sample_index, c) for c in range(3)
    ]
    assert all(f["error"].startswith(f"batch answer request a-{items[2].sample_index}-") for f in failed)
    assert len(cache.failed()) == 3
    # A rerun (server healthy again) asks only for the failed three.
    with FakeOpenAI() as fake:
        report, cache = _batch(fake, tmp_path, items, samples=3)
        assert report.answered == 3 and cache.failed() == []
        assert len(fake.requests("reasoning")) == 1 and fake.requests("reasoning")[0]["n"] == 3


def test_reference_model_through_run_teach(tmp_path, capsys):
    pytest.importorskip("ftcot_jax.teacher.reference")
    root = tmp_path / "cache"
    argv = [
        "teach",
        "--task",
        "coin_flip",
        "--model",
        "reference",
        "--limit",
        "5",
        "--cache-dir",
        str(root),
        "--no-progress",
    ]
    assert main(argv) == 0
    recs = TeacherCache(root, task="coin_flip", teacher_model="reference", temperature=0.0).records()
    assert len(recs) == 5 and {r.protocol for r in recs} == {"reference"}
    assert "5 answered" in capsys.readouterr().out
    assert main(argv) == 0 and "5 already cached" in capsys.readouterr().out


def test_backoff_has_jitter_and_cap():
    b = OpenAIBackend(
        "m", base_url="http://127.0.0.1:9/v1", retry=RetryPolicy(base_delay=1.0, max_delay=8.0), rng=random.Random(0)
    )
    delays = [b._backoff(a) for a in range(6)]
    assert all(0.5 * min(8, 2**a) <= d <= min(8, 2**a) for a, d in enumerate(delays))
    assert len({round(d, 6) for d in delays}) == 6
    assert delays[-1] <= 8.0
