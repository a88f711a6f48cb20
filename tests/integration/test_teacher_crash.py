"""Crash tests: kill -9 `ftcot teach` at random (seeded) moments, then rerun; kill -9 a process appending to
the teacher cache.

After every kill the cache must verify (only a truncated last record may be cut off), hold every
question the server answered before the kill except the in-flight ones, and hold nothing the
server did not answer. Each rerun must not ask again for anything already cached, and the final
run completes the rest."""

import os
import random
import signal
import subprocess
import sys
import time
import warnings

from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.run import select_items
from ftcot_jax.tfrecord import RecordCorruptError, read_records
from tests.helpers.data import teacher_record
from tests.helpers.fakes.fake_openai import FakeOpenAI
from tests.helpers.train_subprocess import REPO

TASK, N, CONCURRENCY, KILLS = "single_eq", 32, 4, 3


def _cmd(cache_dir):
    return [
        sys.executable,
        "-m",
        "ftcot_jax",
        "teach",
        "--task",
        TASK,
        "--model",
        "fake-teacher",
        "--split",
        "train",
        "--limit",
        str(N),
        "--concurrency",
        str(CONCURRENCY),
        "--cache-dir",
        str(cache_dir),
        "--no-progress",
        "--max-attempts",
        "2",
    ]


def _cached_questions(cache_dir, by_index) -> set[str]:
    cache = TeacherCache(cache_dir, task=TASK, teacher_model="fake-teacher", temperature=0.0)
    truncated = 0
    for path in cache.record_files():
        try:
            for _ in read_records(path, on_corrupt="raise"):
                pass
        except RecordCorruptError as e:
            assert e.problem.startswith("truncated"), e  # a CRC mismatch would be real corruption
            truncated += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reader warns about a truncated tail
        keys = cache.done_keys()
        recs = cache.records()
    assert len(recs) == len(keys)
    for r in recs:  # every record decodes and belongs to its question
        assert by_index[r.sample_index] == r.question and r.answer_text
    return {by_index[i] for i, _ in keys}


def test_kill_and_resume(tmp_path):
    rng = random.Random(1234)
    items = select_items(TASK, "train", limit=N)
    by_index = {it.sample_index: it.question for it in items}
    cache_dir = tmp_path / "cache"
    with FakeOpenAI(delay=0.03) as fake:
        env = dict(os.environ, OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-crash-test-key")
        env.pop("FTCOT_TEACHER_CACHE", None)
        kills = 0
        for run in range(KILLS + 1):
            cached_before = _cached_questions(cache_dir, by_index) if cache_dir.exists() else set()
            start = len(fake.log)
            proc = subprocess.Popen(_cmd(cache_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if run < KILLS:
                t0 = time.monotonic()
                while len(fake.log) == start and time.monotonic() - t0 < 20:  # until it talks to the server
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.6))
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
                kills += 1
            else:
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err.decode()[-2000:]
            log = fake.log[start:]
            # Nothing already cached was asked for again.
            assert not {e["question"] for e in log} & cached_before
            cached = _cached_questions(cache_dir, by_index)
            answered = {e["question"] for e in log if e["kind"] == "answer" and e["sent"]}
            assert cached_before <= cached
            assert cached - cached_before <= answered  # nothing cached that the server did not answer
            assert len(answered - cached) <= CONCURRENCY  # only in-flight answers may be lost
        assert kills == KILLS
        assert cached == set(by_index.values())
    # The last run reported every question; no question needed more than one answer per run.
    assert b"0 failed" in out


_WRITER = """
import sys
sys.path.insert(0, {repo!r})
from ftcot_jax.teacher.cache import TeacherCache
from tests.helpers.data import teacher_record
c = TeacherCache({root!r}, task="coin_flip", teacher_model="m", temperature=0)
for s in range(100000):
    c.append(teacher_record(s, model="m", temperature=0, rationale="r" * (s % 5000)))
    print(s, flush=True)  # printed only after the record was written and flushed
"""


def test_kill_9_while_appending_loses_nothing_answered(tmp_path):
    """kill -9 a process appending to the cache: every record it reported written is there afterwards."""
    for attempt in range(3):
        root = tmp_path / f"run{attempt}"
        code = _WRITER.format(repo=str(REPO), root=str(root))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        answered = []
        for line in proc.stdout:
            answered.append(int(line))
            if len(answered) >= 200 + 150 * attempt:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered += [int(x) for x in proc.stdout.read().split()]
        cache = TeacherCache(root, task="coin_flip", teacher_model="m", temperature=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last record is allowed (and dropped)
            done = {s for s, _ in cache.done_keys()}
        assert set(answered) <= done and len(done) <= len(answered) + 1
        cache.append(teacher_record(max(done) + 1, model="m", temperature=0))  # the rerun appends to a new file
        cache.close()
        assert len(cache.record_files()) == 2
