"""`ftcot cache inspect|verify|export|import` (parsers live in cli.py's issue-5 block)."""

from __future__ import annotations

import sys
import warnings
from collections import Counter

from ftcot_jax.tfrecord import RecordCorruptError, read_records, repair_tail
from ftcot_jax.teacher.cache import TeacherCache, find_caches, record_from_example


def default_root(args) -> str:
    from ftcot_jax.teacher.run import default_cache_dir

    return args.cache_dir or default_cache_dir()


def select(args) -> list[TeacherCache]:
    """Caches under the root matching --task / --teacher-model / --temperature (all when unset)."""
    root = default_root(args)
    caches = [c for c in find_caches(root)
              if (not args.task or c.task in args.task)
              and (not args.teacher_model or c.teacher_model == args.teacher_model)
              and (args.temperature is None or abs(c.temperature - args.temperature) < 1e-6)]
    if not caches:
        raise ValueError(f"no teacher cache under {root} matches"
                         + "".join(f" {k}={v}" for k, v in (("task", args.task), ("teacher_model", args.teacher_model),
                                                           ("temperature", args.temperature)) if v is not None))
    return caches


def describe(cache: TeacherCache) -> dict:
    """Counts and teacher accuracy (zs_cot rule, every record) of one cache."""
    from ftcot_jax.scoring import check_answer

    recs = cache.records()
    correct = sum(check_answer(r.task, r.answer_text, r.gold_answer, "zs_cot") for r in recs)
    return {
        "records": len(recs),
        "questions": len({r.sample_index for r in recs}),
        "splits": dict(Counter(r.split for r in recs)),
        "completions_per_question": dict(Counter(Counter(r.sample_index for r in recs).values())),
        "accuracy": correct / len(recs) if recs else 0.0,
        "correct": correct,
        "failed": len(cache.failed()),
        "protocols": dict(Counter(r.protocol for r in recs)),
        "endpoints": sorted({r.endpoint for r in recs}),
        "prompt_tokens": sum(r.prompt_tokens for r in recs),
        "completion_tokens": sum(r.completion_tokens for r in recs),
        "incomplete": sum(r.finish_reason != "stop" or r.reasoning_finish_reason != "stop" for r in recs),
        "files": len(cache.record_files()),
    }


def _fmt_counts(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0])))


def _describe_reporting_warnings(cache: TeacherCache) -> dict:
    """describe(), with reader warnings (a torn tail after a crash) printed as one plain line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = describe(cache)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return d


def inspect_command(args) -> int:
    for cache in select(args):
        d = _describe_reporting_warnings(cache)
        print(f"{cache.path}")
        print(f"  task {cache.task}, teacher {cache.teacher_model}, temperature {cache.temperature:g}, "
              f"{d['files']} file(s)")
        print(f"  {d['records']} records for {d['questions']} questions (split {_fmt_counts(d['splits']) or '-'}; "
              f"completions per question {_fmt_counts(d['completions_per_question']) or '-'})")
        print(f"  teacher accuracy {100 * d['accuracy']:.1f}% ({d['correct']}/{d['records']}, zs_cot rule); "
              f"{d['incomplete']} not finished by 'stop'; {d['failed']} still failed")
        print(f"  protocol {_fmt_counts(d['protocols']) or '-'}; endpoint {', '.join(d['endpoints']) or '-'}; "
              f"tokens {d['prompt_tokens']} prompt + {d['completion_tokens']} completion")
    return 0


def verify_command(args) -> int:
    """CRC-checks and decodes every record of every selected cache; exit 1 naming each bad file + offset."""
    bad = 0
    for cache in select(args):
        if getattr(args, "repair", False):
            for path in cache.record_files():
                try:
                    cut = repair_tail(path)
                except RecordCorruptError:
                    continue  # not a torn tail: reported below, left for a human
                if cut:
                    print(f"repaired {path}: removed a torn last record ({cut} bytes)")
        n = 0
        for path in cache.record_files():
            try:
                for i, data in enumerate(read_records(path, on_corrupt="raise")):
                    record_from_example(data, where=f"{path} record {i}")
                    n += 1
            except RecordCorruptError as e:
                bad += 1
                print(f"CORRUPT {e}", file=sys.stderr)
            except ValueError as e:
                bad += 1
                print(f"INVALID {e}", file=sys.stderr)
        print(f"{cache.path}: {n} records in {len(cache.record_files())} file(s) verified")
    if bad:
        print(f"{bad} file(s) failed verification. A 'truncated' last record is what a killed writer leaves: "
              "readers drop it, the next `ftcot teach` cuts it off and asks for that item again, and "
              "`ftcot cache verify --repair` cuts it off now. A CRC mismatch is real damage and is never "
              "repaired automatically.", file=sys.stderr)
        return 1
    return 0


def export_command(args) -> int:
    from ftcot_jax.teacher.compat import export_cache

    for cache in select(args):
        path, n = export_cache(cache, args.out)
        print(f"exported {n} completions of {cache.path} -> {path}")
    return 0


def import_command(args) -> int:
    from ftcot_jax.teacher.compat import import_file

    root = default_root(args)
    if args.task and len(args.task) > 1:
        raise ValueError("import takes at most one --task (it overrides the file's dataset_key)")
    for f in args.files:
        cache, added, skipped = import_file(f, root, task=args.task[0] if args.task else None,
                                            teacher_model=args.teacher_model, temperature=args.temperature)
        print(f"imported {added} completions from {f} -> {cache.path}"
              + (f" ({skipped} already cached, skipped)" if skipped else ""))
    return 0
