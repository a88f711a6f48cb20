"""Teacher-cache I/O speed: records/s for writing (flush per record, as `ftcot teach` does), raw TFRecord
reading (framing + both CRCs), full TeacherRecord decoding, and the resume scan (done_keys).

    /work/venv/bin/python scripts/bench_records.py [--records 100000] [--fsync]

Prints one JSON object. `measure()` is importable (scripts/bench_teacher.py may reuse it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from ftcot_jax import records
from ftcot_jax.teacher.cache import TeacherCache, TeacherRecord, record_from_example


def _record(i: int) -> TeacherRecord:
    q = f"Question {i}: Mary had {i} apples and bought 12 more. How many apples does she have now?"
    step1 = f"Q: {q}\nA: Let's think step by step."
    rationale = " ".join(["Mary starts with some apples and buys more, so we add the two numbers."] * 6)
    return TeacherRecord(
        task="multiarith", split="train", sample_index=i, completion_index=0, teacher_model="gpt-4o-mini",
        endpoint="https://api.openai.com/v1", protocol="chat", question=q, gold_answer=str(i + 12),
        reasoning_prompt=step1, rationale=rationale, reasoning_finish_reason="stop",
        answer_prompt=f"{step1}{rationale}\nTherefore, the answer is", answer_text=f" {i + 12}.",
        finish_reason="stop", temperature=0.0, seed=-1, prompt_tokens=120, completion_tokens=90,
        timestamp=time.time())


def measure(n: int, workdir: Path, fsync: bool = False) -> dict:
    recs = [_record(i) for i in range(n)]
    cache = TeacherCache(workdir, task="multiarith", teacher_model="gpt-4o-mini", temperature=0.0)
    if fsync:
        cache._ensure_dir()
        cache._writer = records.RecordWriter(cache._new_record_file(), fsync=True)
    t0 = time.perf_counter()
    for r in recs:
        cache.append(r)
    cache.close()
    t_write = time.perf_counter() - t0
    (path,) = cache.record_files()

    t0 = time.perf_counter()
    raw = sum(1 for _ in records.read_records(path))
    t_raw = time.perf_counter() - t0

    t0 = time.perf_counter()
    decoded = [record_from_example(d) for d in records.read_records(path)]
    t_decode = time.perf_counter() - t0

    t0 = time.perf_counter()
    done = cache.done_keys()
    t_done = time.perf_counter() - t0

    assert raw == len(decoded) == len(done) == n
    assert abs(decoded[7].timestamp - recs[7].timestamp) < 1e-6  # stored with microsecond resolution
    assert dataclasses.replace(decoded[7], timestamp=recs[7].timestamp) == recs[7]
    size = path.stat().st_size
    return {
        "records": n,
        "bytes_per_record": round(size / n),
        "write_records_per_s": round(n / t_write),
        "write_fsync": fsync,
        "read_raw_records_per_s": round(n / t_raw),
        "read_raw_MB_per_s": round(size / t_raw / 1e6, 1),
        "read_decode_records_per_s": round(n / t_decode),
        "done_keys_records_per_s": round(n / t_done),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--fsync", action="store_true", help="fsync after every record (slower, survives power loss)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(measure(args.records, Path(d), args.fsync), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
