"""The teacher's one entry for a run's teach stage (`ftcot run`): `teach_stage` takes the run's teacher section,
the task, its questions and the cache root, and fills the cache: a released teacher's file is imported
(`teacher.import_from`), the reference program's answers of another version are dropped first, any other teacher
is asked for what the cache lacks. It returns the cache directory; samples that still fail stop the stage.
"""

from __future__ import annotations

from collections.abc import Callable

from ftcot_jax.config.run import TeacherSection
from ftcot_jax.files import write_text_atomic
from ftcot_jax.paths import AnyPath, rmtree
from ftcot_jax.teacher import reference
from ftcot_jax.teacher.backend import TeachItem
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.compat import TeacherMismatch, import_file, task_file
from ftcot_jax.teacher.run import make_backend, run_teach

PROGRAM_VERSION_FILE = "program_version"  # in the reference program's cache dir: the version that wrote it


def teach_stage(
    section: TeacherSection,
    task: str,
    items: list[TeachItem],
    cache_root,
    *,
    temperature: float,
    samples: int,
    log: Callable[[str], None],
) -> AnyPath:
    """Teaches `items` (`samples` completions each, at `temperature`) into the cache of (task, section.model)
    under `cache_root`, or imports the task's released file (which brings its own questions; `items` is then
    unused). Logs one line; RuntimeError when samples failed (they stay in the cache's failed list)."""
    if section.import_from:
        return _import(section, task, cache_root, temperature, log)
    backend = make_backend(
        section.model,
        protocol=section.protocol,
        base_url=section.endpoint or None,
        api_key_env=section.api_key_env or None,
        max_tokens=section.max_tokens,
        stop=list(section.stop),
        concurrency=section.concurrency,
        timeout=section.timeout,
        max_attempts=section.max_attempts,
        seed=None if section.seed < 0 else section.seed,
    )
    if section.model == reference.MODEL:
        _drop_older_program_answers(
            TeacherCache(cache_root, task=task, teacher_model=backend.model, temperature=temperature).path
        )
    with TeacherCache(cache_root, task=task, teacher_model=backend.model, temperature=temperature) as cache:
        rep = run_teach(
            backend,
            cache,
            items,
            samples=samples,
            temperature=temperature,
            concurrency=section.concurrency,
            progress=False,
        )
        log(f"  teach {task} T={temperature:g} x{samples}: {rep.summary().splitlines()[0]}")
        if rep.failed:
            raise RuntimeError(
                f"teacher: {rep.failed} of {rep.pairs} {task} samples failed ("
                f"{'; '.join(rep.errors[:2])}); rerun to retry them"
            )
        return cache.path


def _drop_older_program_answers(cache_dir) -> None:
    """The reference program's cache keeps only its current version's answers: a cache another version wrote
    (its `program_version` file differs or is missing) is deleted first; the program rewrites it in seconds."""
    marker = cache_dir / PROGRAM_VERSION_FILE
    if marker.exists() and marker.read_text().strip() == str(reference.VERSION):
        return
    if cache_dir.exists():
        rmtree(cache_dir)
    write_text_atomic(marker, f"{reference.VERSION}\n")


def _import(section: TeacherSection, task: str, cache_root, temperature: float, log) -> AnyPath:
    """The task's released teacher file into the cache (the stage hash covers the file's bytes)."""
    path = task_file(section.import_from, task)
    try:
        cache, added, skipped = import_file(path, cache_root, expect=(task, section.model, temperature))
    except TeacherMismatch as e:
        raise TeacherMismatch(f"{e} (this run's teacher.model={section.model})") from None
    log(f"  teach {task} T={temperature:g}: imported {added} completions from {path} ({skipped} already cached)")
    return cache.path
