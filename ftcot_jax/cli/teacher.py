"""`ftcot teach`, `ftcot cache`: teacher rationales and the teacher cache."""

from __future__ import annotations



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
    p.add_argument("--split", choices=("train", "test", "all"), default=None,
                   help="questions to teach (default: all at T=0, train otherwise, like the reference)")
    p.add_argument("--limit", type=int, default=None, help="teach only the first N questions of the split")
    p.add_argument("--protocol", choices=("completions", "chat"), default="completions",
                   help="text completions (the paper's prompts) or chat completions (docs/teacher.md)")
    p.add_argument("--concurrency", type=int, default=8, help="max requests in flight")
    p.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
    p.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half price, up to 24 h)")
    p.add_argument("--base-url", default=None, help="server URL ending in /v1 (default $OPENAI_BASE_URL)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="read the API key from this environment variable instead of OPENAI_API_KEY")
    p.add_argument("--max-tokens", type=int, default=128, help="max tokens per step (reference: 128)")
    p.add_argument("--stop", action="append", default=None, help='stop sequence (repeatable; default "END"; "" = none)')
    p.add_argument("--seed", type=int, default=None, help="request seed (sample c of a question gets seed+c)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it is retried")
    p.add_argument("--max-attempts", type=int, default=8, help="attempts per request (429/5xx/timeouts/resets)")
    p.add_argument("--prices", default=None, metavar="FILE", help='JSON price overrides {"model": {"input": usd_per_1M, "output": ...}}')
    p.add_argument("--poll-interval", type=float, default=30.0, help="--batch: seconds between status polls")
    p.add_argument("--max-wait", type=float, default=None, help="--batch: stop polling after N s (rerun resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_teach)


def _run_teach(args) -> int:
    from ftcot_jax.teacher.run import teach_command

    if args.stop is None:
        args.stop = ["END"]
    return teach_command(args)




def add_cache_parser(sub) -> None:
    p = sub.add_parser("cache", help="inspect, verify, export or import teacher caches",
                       description="The teacher cache (docs/cache_format.md): TFRecord files of tf.train.Example.")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    def common(q, filters=True):
        q.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
        if filters:
            q.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
            q.add_argument("--teacher-model", default=None, help="only this teacher model")
            q.add_argument("--temperature", type=float, default=None, help="only this temperature")

    q = csub.add_parser("inspect", help="counts, splits, teacher accuracy, failed items, tokens per cache")
    common(q)
    q.set_defaults(func=_run_cache, action="inspect")
    q = csub.add_parser("verify", help="CRC-check and decode every record (exit 1 naming file + offset on corruption)")
    common(q)
    q.add_argument("--repair", action="store_true",
                   help="first cut torn last records (left by a killed writer) off files no process is writing")
    q.set_defaults(func=_run_cache, action="verify")
    q = csub.add_parser("export", help="write caches as the reference's CompletionDataset JSON")
    common(q)
    q.add_argument("--out", required=True, help="directory; files go to B_<teacher>__C_<key>/D_<task>.json")
    q.set_defaults(func=_run_cache, action="export")
    q = csub.add_parser("import", help="add CompletionDataset JSON files (e.g. the paper's teacher data) to the cache")
    common(q)
    q.add_argument("files", nargs="+", help="D_<task>.json files")
    q.set_defaults(func=_run_cache, action="import")


def _run_cache(args) -> int:
    from ftcot_jax.teacher import cache_cli

    return getattr(cache_cli, f"{args.action}_command")(args)


def add_parsers(sub) -> None:
    add_teach_parser(sub)
    add_cache_parser(sub)
