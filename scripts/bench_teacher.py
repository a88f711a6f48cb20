"""Teacher throughput: requests/s and tokens/s of `run_teach` against a local llama.cpp server
(xllamacpp, SmolLM2-135M-Instruct GGUF) at concurrency 1/4/16, plus teacher-cache write/read
records/s (scripts/bench_records.py's measure()).

    /work/venv/bin/python scripts/bench_teacher.py [--threads 1] [--max-tokens 16] [--out bench_teacher.json]

Each level teaches max(4, concurrency) fresh questions (capped by --max-questions), one
sample each (2 requests per question: rationale + answer) into a throwaway cache.
Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/helpers/fakes/llamacpp.py starts the server
sys.path.insert(0, str(ROOT / "scripts"))

from ftcot_jax.teacher.cache import TeacherCache  # noqa: E402
from ftcot_jax.teacher.openai_backend import OpenAIBackend  # noqa: E402
from ftcot_jax.teacher.run import run_teach, select_items  # noqa: E402
from tests.helpers.fakes import llamacpp  # noqa: E402


def bench_server(
    base_url: str, concurrency: int, questions: list, max_tokens: int, protocol: str, workdir: Path
) -> dict:
    backend = OpenAIBackend(
        "smollm2-135m-instruct",
        protocol=protocol,
        base_url=base_url,
        max_tokens=max_tokens,
        concurrency=concurrency,
        timeout=300,
    )
    cache = TeacherCache(
        workdir / f"c{concurrency}", task=questions[0].task, teacher_model=backend.model, temperature=0.0
    )
    report = run_teach(backend, cache, questions, samples=1, temperature=0.0, concurrency=concurrency, progress=False)
    if report.failed:
        raise RuntimeError(f"{report.failed} failed at concurrency {concurrency}: {report.errors}")
    u = backend.usage
    s = report.seconds
    return {
        "concurrency": concurrency,
        "questions": len(questions),
        "requests": u.requests,
        "seconds": round(s, 2),
        "requests_per_s": round(u.requests / s, 2),
        "completion_tokens_per_s": round(u.completion_tokens / s, 1),
        "total_tokens_per_s": round((u.prompt_tokens + u.completion_tokens) / s, 1),
        "samples_per_s": round(report.answered / s, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads (1: the machine is shared; spinning threads collapse under contention)",
    )
    ap.add_argument("--levels", default="1,4,16", help="concurrency levels")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-questions", type=int, default=32)
    ap.add_argument("--protocol", choices=("completions", "chat"), default="completions")
    ap.add_argument("--task", default="multiarith")
    ap.add_argument("--records", type=int, default=100_000, help="cache records for the I/O benchmark")
    ap.add_argument("--out", default="bench_teacher.json")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]

    result = {
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "settings": vars(args),
        "server": None,
        "cache": None,
    }
    why = llamacpp.available()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if why:
            print(f"skipping the server benchmark: {why}", file=sys.stderr)
        else:
            pool = select_items(args.task, "train", limit=sum(min(args.max_questions, max(4, c)) for c in levels))
            rows, start = [], 0
            with llamacpp.LlamaCppServer(threads=args.threads, parallel=max(levels), ctx=256 * max(levels)) as srv:
                bench_server(srv.base_url, 1, pool[:1], args.max_tokens, args.protocol, tmp / "warmup")
                for c in levels:
                    k = min(args.max_questions, max(4, c))
                    rows.append(
                        bench_server(srv.base_url, c, pool[start : start + k], args.max_tokens, args.protocol, tmp)
                    )
                    start += k
                    print(f"  concurrency {c}: {rows[-1]['requests_per_s']} req/s", file=sys.stderr)
            result["server"] = rows
        from bench_records import measure

        t = time.perf_counter()
        result["cache"] = measure(args.records, tmp / "records")
        result["cache"]["seconds"] = round(time.perf_counter() - t, 1)

    if result["server"]:
        print(
            f"llama.cpp server (SmolLM2-135M Q4_1, {args.threads} threads, {args.protocol}, "
            f"max_tokens {args.max_tokens}):"
        )
        print(f"{'concurrency':>11} {'questions':>9} {'requests':>8} {'req/s':>7} {'gen tok/s':>9} {'all tok/s':>9}")
        for r in result["server"]:
            print(
                f"{r['concurrency']:>11} {r['questions']:>9} {r['requests']:>8} {r['requests_per_s']:>7} "
                f"{r['completion_tokens_per_s']:>9} {r['total_tokens_per_s']:>9}"
            )
    c = result["cache"]
    print(
        f"teacher cache ({c['records']} records, {c['bytes_per_record']} B each): "
        f"write {c['write_records_per_s']}/s (flush per record), read raw {c['read_raw_records_per_s']}/s, "
        f"read+decode {c['read_decode_records_per_s']}/s, resume scan {c['done_keys_records_per_s']}/s"
    )
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
