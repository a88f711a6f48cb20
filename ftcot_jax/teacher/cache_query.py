"""Questions asked of the caches under a root: which match a filter, what one holds, whether it reads clean."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftcot_jax.paths import as_path
from ftcot_jax.scoring import check_answer
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.records import record_from_example
from ftcot_jax.tfrecord import RecordCorruptError, read_records, repair_tail


def find_caches(root) -> list[TeacherCache]:
    """Every cache directory under `root` (found by its cache.json), sorted by path."""
    root = as_path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cache root {root} does not exist")
    return [TeacherCache.from_dir(p.parent) for p in sorted(root.glob("*/*/*/cache.json"))]


def select_caches(
    root, *, tasks: list[str] | None = None, teacher_model: str | None = None, temperature: float | None = None
) -> list[TeacherCache]:
    """Caches under `root` matching the tasks / teacher model / temperature (every cache for a filter left
    unset). ValueError when none matches."""
    caches = [
        c
        for c in find_caches(root)
        if (not tasks or c.task in tasks)
        and (not teacher_model or c.teacher_model == teacher_model)
        and (temperature is None or abs(c.temperature - temperature) < 1e-6)
    ]
    if not caches:
        raise ValueError(
            f"no teacher cache under {root} matches"
            + "".join(
                f" {k}={v}"
                for k, v in (("task", tasks), ("teacher_model", teacher_model), ("temperature", temperature))
                if v is not None
            )
        )
    return caches


def describe(cache: TeacherCache) -> dict:
    """Counts and teacher accuracy (zs_cot rule, every record) of one cache."""
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


@dataclass
class CacheCheck:
    """What verify_cache found in one cache."""

    records: int = 0  # records that decoded
    files: int = 0
    repaired: list[tuple[Path, int]] = field(default_factory=list)  # (file, bytes of torn tail cut off)
    corrupt: list[str] = field(default_factory=list)  # one message per file with a CRC error or a torn tail
    invalid: list[str] = field(default_factory=list)  # one message per file with a record that does not decode

    @property
    def bad_files(self) -> int:
        return len(self.corrupt) + len(self.invalid)


def verify_cache(cache: TeacherCache, *, repair: bool = False) -> CacheCheck:
    """CRC-checks and decodes every record. With `repair`, first cuts a torn last record (what a killed
    writer leaves) off each file; a CRC mismatch is real damage and is never repaired."""
    check = CacheCheck()
    if repair:
        for path in cache.record_files():
            try:
                cut = repair_tail(path)
            except RecordCorruptError:
                continue  # not a torn tail: reported below, left for a human
            if cut:
                check.repaired.append((path, cut))
    files = cache.record_files()
    check.files = len(files)
    for path in files:
        try:
            for i, data in enumerate(read_records(path, on_corrupt="raise")):
                record_from_example(data, where=f"{path} record {i}")
                check.records += 1
        except RecordCorruptError as e:
            check.corrupt.append(str(e))
        except ValueError as e:
            check.invalid.append(str(e))
    return check
