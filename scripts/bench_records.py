"""Teacher-cache I/O speed: records/s for writing (flush per record, as `ftcot teach` does), raw TFRecord
reading (framing + both CRCs), full TeacherRecord decoding, and the resume scan (done_keys).

    /work/venv/bin/python scripts/bench_records.py [--records 100000] [--fsync]

Prints one JSON object. `measure()` is importable (scripts/bench_teacher.py may reuse it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ftcot_jax import tfrecord
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.records import TeacherRecord, record_from_example


def _record(i: int) -> TeacherRecord:
    q = f"Question {i}: Mary had {i} apples and bought 12 more. How many apples does she have now?"
    step1 = f"Q: {q}\nA: Let's think step by step."
    rationale = " ".join(["Mary starts with some apples and buys more, so we add the two numbers."] * 6)
    return TeacherRecord(
        task="multiarith",
        split="train",
        sample_index=i,
        completion_index=0,
        teacher_model="gpt-4o-mini",
        endpoint="https://api.openai.com/v1",
        protocol="chat",
        question=q,
        gold_answer=str(i + 12),
        reasoning_prompt=step1,
        rationale=rationale,
        reasoning_finish_reason="stop",
        answer_prompt=f"{step1}{rationale}\nTherefore, the answer is",
        answer_text=f" {i + 12}.",
        finish_reason="stop",
        temperature=0.0,
        seed=-1,
        prompt_tokens=120,
        completion_tokens=90,
        timestamp=time.time(),
    )


def measure(n: int, workdir: Path, fsync: bool = False) -> dict:
    recs = [_record(i) for i in range(n)]
    cache = TeacherCache(workdir, task="multiarith", teacher_model="gpt-4o-mini", temperature=0.0)
    if fsync:
        cache._ensure_dir()
        cache._writer = tfrecord.RecordWriter(cache._new_record_file(), fsync=True)
    rates = {}

    def timed(name, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rates[name] = (round(n / wall), round(n / max(cpu, 1e-9)), wall)
        return out

    def write_all():
        for r in recs:
            cache.append(r)
        cache.close()

    timed("write", write_all)
    (path,) = cache.record_files()
    raw = timed("read_raw", lambda: sum(1 for _ in tfrecord.read_records(path)))
    decoded = timed("read_decode", lambda: [record_from_example(d) for d in tfrecord.read_records(path)])
    done = timed("done_keys", cache.done_keys)

    assert raw == len(decoded) == len(done) == n
    assert abs(decoded[7].timestamp - recs[7].timestamp) < 1e-6  # stored with microsecond resolution
    assert dataclasses.replace(decoded[7], timestamp=recs[7].timestamp) == recs[7]
    size = path.stat().st_size
    out = {
        "records": n,
        "bytes_per_record": round(size / n),
        "write_fsync": fsync,
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    for name, (wall_rate, cpu_rate, _) in rates.items():
        out[f"{name}_records_per_s"] = wall_rate
        out[f"{name}_records_per_cpu_s"] = cpu_rate  # less sensitive to other processes on the machine
    out["read_raw_MB_per_s"] = round(size / rates["read_raw"][2] / 1e6, 1)
    return out


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
