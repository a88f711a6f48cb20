"""`ftcot teach`, `ftcot cache`: teacher rationales and the teacher cache.

`ftcot teach` imports `teacher.run` and `teacher.batch` when called: they import the openai client,
which `ftcot --help` and `ftcot tasks list` should not pay for.
"""

from __future__ import annotations

import sys
import warnings

from ftcot_jax.paths import check_reachable
from ftcot_jax.teacher import pricing
from ftcot_jax.teacher.backend import TeacherError
from ftcot_jax.teacher.cache import TeacherCache, default_cache_dir
from ftcot_jax.teacher.cache_query import describe, select_caches, verify_cache
from ftcot_jax.teacher.compat import completion_files, export_cache, import_file


def add_teach_parser(sub) -> None:
    p = sub.add_parser(
        "teach",
        help="Zero-shot-CoT teacher rationales into the TFRecord cache (resumable)",
        description="Ask a teacher (any OpenAI-compatible server, or --model reference) for Zero-shot-CoT "
        "rationales and answers; every answer is appended to the cache as it arrives, cached samples are "
        "never requested again, failures are logged and retried by the next run. Endpoint and key: "
        "OPENAI_BASE_URL / OPENAI_API_KEY (or --base-url / --api-key-env). See docs/teacher.md.",
    )
    p.add_argument("--task", required=True, help="task name (ftcot tasks list)")
    p.add_argument("--model", required=True, help='teacher model name on the server, or "reference" (offline, no LLM)')
    p.add_argument("--samples", type=int, default=1, metavar="D", help="rationales per question (diverse reasoning)")
    p.add_argument("--temperature", type=float, default=0.0, help="step-1 sampling temperature (answer step is greedy)")
    p.add_argument(
        "--split",
        choices=("train", "test", "all"),
        default=None,
        help="questions to teach (default: all at T=0, train otherwise, like the reference)",
    )
    p.add_argument("--limit", type=int, default=None, help="teach only the first N questions of the split")
    p.add_argument(
        "--protocol",
        choices=("completions", "chat"),
        default="completions",
        help="text completions (the paper's prompts) or chat completions (docs/teacher.md)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="max requests in flight")
    p.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
    p.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half price, up to 24 h)")
    p.add_argument("--base-url", default=None, help="server URL ending in /v1 (default $OPENAI_BASE_URL)")
    p.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="read the API key from this environment variable instead of OPENAI_API_KEY",
    )
    p.add_argument("--max-tokens", type=int, default=128, help="max tokens per step (reference: 128)")
    p.add_argument("--stop", action="append", default=None, help='stop sequence (repeatable; default "END"; "" = none)')
    p.add_argument("--seed", type=int, default=None, help="request seed (sample c of a question gets seed+c)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it is retried")
    p.add_argument("--max-attempts", type=int, default=8, help="attempts per request (429/5xx/timeouts/resets)")
    p.add_argument(
        "--prices",
        default=None,
        metavar="FILE",
        help='JSON price overrides {"model": {"input": usd_per_1M, "output": ...}}',
    )
    p.add_argument("--poll-interval", type=float, default=30.0, help="--batch: seconds between status polls")
    p.add_argument("--max-wait", type=float, default=None, help="--batch: stop polling after N s (rerun resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_teach)


def _run_teach(args) -> int:
    from ftcot_jax.teacher.batch import BatchOptions
    from ftcot_jax.teacher.run import cost_estimator, default_split, make_backend, select_items, teach

    split = args.split or default_split(args.temperature)
    items = select_items(args.task, split, limit=args.limit)
    backend = make_backend(
        args.model,
        protocol=args.protocol,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_tokens=args.max_tokens,
        stop=["END"] if args.stop is None else args.stop,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_attempts=args.max_attempts,
        seed=args.seed,
    )
    table = pricing.load_prices(args.prices) if args.prices else None
    cost_fn = cost_estimator(backend, batch=args.batch, table=table)
    batch = BatchOptions(poll_interval=args.poll_interval, max_wait=args.max_wait) if args.batch else None
    root = args.cache_dir or default_cache_dir()
    check_reachable(root)  # before the first paid request
    with TeacherCache(root, task=args.task, teacher_model=backend.model, temperature=args.temperature) as cache:
        print(
            f"teach {args.task} ({split}, {len(items)} questions x {args.samples} samples, T={args.temperature:g}) "
            f"with {backend.model} [{backend.protocol}{', batch' if args.batch else ''}] at {backend.endpoint}"
            f" -> {cache.path}",
            file=sys.stderr,
        )
        try:
            report = teach(
                backend,
                cache,
                items,
                samples=args.samples,
                temperature=args.temperature,
                concurrency=args.concurrency,
                batch=batch,
                progress=not args.no_progress,
                cost_fn=cost_fn,
            )
        except TeacherError as e:  # fatal (bad key, unknown model) or a batch still pending
            raise ValueError(f"teacher: {e} (answers so far are in {cache.path})") from None
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: answers so far are in {cache.path}; rerun the same command to resume", file=sys.stderr
            )
            return 130
        print(report.summary())
        if report.cost is None and backend.protocol != "reference":
            print(f"(no price for {backend.model!r} in the table: pass --prices FILE for a cost estimate)")
    return 1 if report.failed else 0


def add_cache_parser(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="inspect, verify, export or import teacher caches",
        description="The teacher cache (docs/cache_format.md): TFRecord files of tf.train.Example.",
    )
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    def common(q, filters=True):
        q.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
        if filters:
            q.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
            q.add_argument("--teacher-model", default=None, help="only this teacher model")
            q.add_argument("--temperature", type=float, default=None, help="only this temperature")

    q = csub.add_parser("inspect", help="counts, splits, teacher accuracy, failed items, tokens per cache")
    common(q)
    q.set_defaults(func=_inspect)
    q = csub.add_parser("verify", help="CRC-check and decode every record (exit 1 naming file + offset on corruption)")
    common(q)
    q.add_argument(
        "--repair",
        action="store_true",
        help="first cut torn last records (left by a killed writer) off files no process is writing",
    )
    q.set_defaults(func=_verify)
    q = csub.add_parser("export", help="write caches as the reference's CompletionDataset JSON")
    common(q)
    q.add_argument("--out", required=True, help="directory; files go to B_<teacher>__C_<key>/D_<task>.json")
    q.set_defaults(func=_export)
    q = csub.add_parser("import", help="add CompletionDataset JSON files (e.g. the paper's teacher data) to the cache")
    common(q)
    q.add_argument("files", nargs="+", help="D_<task>.json files, or B_<teacher>__C_<key>/ folders of them")
    q.set_defaults(func=_import)


def _selected(args) -> list[TeacherCache]:
    return select_caches(
        args.cache_dir or default_cache_dir(),
        tasks=args.task,
        teacher_model=args.teacher_model,
        temperature=args.temperature,
    )


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


def _inspect(args) -> int:
    for cache in _selected(args):
        d = _describe_reporting_warnings(cache)
        print(f"{cache.path}")
        print(
            f"  task {cache.task}, teacher {cache.teacher_model}, temperature {cache.temperature:g}, "
            f"{d['files']} file(s)"
        )
        print(
            f"  {d['records']} records for {d['questions']} questions (split {_fmt_counts(d['splits']) or '-'}; "
            f"completions per question {_fmt_counts(d['completions_per_question']) or '-'})"
        )
        print(
            f"  teacher accuracy {100 * d['accuracy']:.2f}% ({d['correct']}/{d['records']}, zs_cot rule); "
            f"{d['incomplete']} not finished by 'stop'; {d['failed']} still failed"
        )
        print(
            f"  protocol {_fmt_counts(d['protocols']) or '-'}; endpoint {', '.join(d['endpoints']) or '-'}; "
            f"tokens {d['prompt_tokens']} prompt + {d['completion_tokens']} completion"
        )
    return 0


def _verify(args) -> int:
    """CRC-checks and decodes every record of every selected cache; exit 1 naming each bad file + offset."""
    bad = 0
    for cache in _selected(args):
        check = verify_cache(cache, repair=args.repair)
        for path, cut in check.repaired:
            print(f"repaired {path}: removed a torn last record ({cut} bytes)")
        for message in check.corrupt:
            print(f"CORRUPT {message}", file=sys.stderr)
        for message in check.invalid:
            print(f"INVALID {message}", file=sys.stderr)
        bad += check.bad_files
        print(f"{cache.path}: {check.records} records in {check.files} file(s) verified")
    if bad:
        print(
            f"{bad} file(s) failed verification. A 'truncated' last record is what a killed writer leaves: "
            "readers drop it, the next `ftcot teach` cuts it off and asks for that item again, and "
            "`ftcot cache verify --repair` cuts it off now. A CRC mismatch is real damage and is never "
            "repaired automatically.",
            file=sys.stderr,
        )
        return 1
    return 0


def _export(args) -> int:
    for cache in _selected(args):
        path, n = export_cache(cache, args.out)
        print(f"exported {n} completions of {cache.path} -> {path}")
    return 0


def _import(args) -> int:
    root = args.cache_dir or default_cache_dir()
    check_reachable(root)
    if args.task and len(args.task) > 1:
        raise ValueError("import takes at most one --task (it overrides the file's dataset_key)")
    for f in completion_files(args.files):
        cache, added, skipped = import_file(
            f,
            root,
            task=args.task[0] if args.task else None,
            teacher_model=args.teacher_model,
            temperature=args.temperature,
        )
        print(
            f"imported {added} completions from {f} -> {cache.path}"
            + (f" ({skipped} already cached, skipped)" if skipped else "")
        )
    return 0


def add_parsers(sub) -> None:
    add_teach_parser(sub)
    add_cache_parser(sub)
