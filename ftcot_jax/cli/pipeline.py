"""`ftcot curate`, `ftcot run`, `ftcot report`: the pipeline and its reports (ftcot_jax/pipeline/)."""

from __future__ import annotations

import json
import os
import sys

from ftcot_jax.cli.common import CLIError


def add_curate_parser(sub) -> None:
    p = sub.add_parser(
        "curate",
        help="teacher cache -> fine-tune sample files (keep correct rationales)",
        description="Fine-tune-CoT (ft_cot: greedy completion 0), diverse reasoning (diverse: all "
        "correct of D samples) or vanilla fine-tuning (ft: gold answers) samples of the train split, "
        "written to <out-dir>/<task>__<key>.tfrecord for `ftcot train`.",
    )
    p.add_argument("--task", action="append", required=True, help="task name (repeatable)")
    p.add_argument("--method", choices=("ft_cot", "diverse", "ft", "step_by_step"), default="ft_cot")
    p.add_argument("--teacher-model", default=None, help="teacher whose cache to read (ft_cot, diverse)")
    p.add_argument(
        "--temperature", type=float, default=None, help="teacher temperature (default 0 ft_cot, 0.7 diverse)"
    )
    p.add_argument("--samples", type=int, default=8, metavar="D", help="diverse: completions per question (default 8)")
    p.add_argument("--split-name", default="default", help='split file ("default", or "template")')
    p.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
    p.add_argument("--out-dir", default="samples", help="where sample files go (default ./samples)")
    p.set_defaults(func=_run_curate)


def _run_curate(args) -> int:
    """One sample file per task; prints teacher accuracy and kept/total."""
    from ftcot_jax.pipeline.curate import curate
    from ftcot_jax.teacher.cache import default_cache_dir

    root = None
    if args.method != "ft":
        if not args.teacher_model:
            raise CLIError(f"--method {args.method} needs --teacher-model (the teacher whose cache to read)")
        root = args.cache_dir or default_cache_dir()
    for task in args.task:
        cur, path = curate(
            task,
            args.method,
            cache_root=root,
            teacher_model=args.teacher_model,
            temperature=args.temperature,
            samples=args.samples,
            split_name=args.split_name,
            out_dir=args.out_dir,
        )
        print(cur.summary(path))
    return 0


def add_run_parser(sub):
    p = sub.add_parser(
        "run",
        help="teach -> curate -> train -> evaluate -> report, resumable (docs/pipeline.md)",
        description="Run the whole pipeline from a YAML config. Stages whose outputs are present "
        "and made by the same configuration are skipped; an interrupted training "
        "resumes from its last checkpoint. Example: ftcot run configs/quickstart.yaml "
        "train.epochs=2 eval.limit=50",
    )
    p.add_argument(
        "config", nargs="?", metavar="CONFIG", help="YAML config (configs/quickstart.yaml, configs/paper/...)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.optim.lr=1e-4 (right after CONFIG; after options use --set)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="set_overrides",
        help="an override that may also come after options (repeatable)",
    )
    p.add_argument("--run-dir", default=None, help="same as run_dir=PATH")
    p.add_argument(
        "--paper-cell",
        default=None,
        metavar="STUDENT/TASK/METHOD",
        help="one cell of the paper's grid (e.g. gpt2/multiarith/ft_cot) on top of CONFIG",
    )
    p.add_argument("--list-paper-cells", action="store_true", help="print the paper grid's cells and exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print what the run will ask its teacher (questions, cached answers, requests, estimated cost) and exit",
    )
    p.add_argument("--prices", default=None, metavar="FILE", help='with --plan: JSON price overrides {"model": {...}}')
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="compile the run's train step and decode for --topology instead of running (ftcot compile); a paper "
        "config without --paper-cell compiles every student of the paper grid, each distinct shape once",
    )
    p.add_argument("--topology", default=None, help="with --compile-only: a TPU slice (v5e-8, v4-8, ...) or cpu")
    p.add_argument("--num-slices", type=int, default=1, help="with --compile-only: slices joined by the network")
    p.add_argument("--json", default=None, metavar="FILE", help="with --compile-only: write the reports as JSON")
    p.set_defaults(func=_run_pipeline)


def _print_plan(cfg, prices_file) -> None:
    from ftcot_jax.pipeline.plan import plan
    from ftcot_jax.teacher.pricing import format_cost, load_prices

    rows = plan(cfg, prices=load_prices(prices_file) if prices_file else None)
    if not rows:
        print("no teach stage: the run's methods need no teacher")
        return
    print(
        "| task | stage | T | questions (test) | samples | cached | requests | est. prompt tok | max completion tok "
        "| est. cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.task} | {r.kind} | {r.temperature:g} | {r.questions} ({r.test_questions}) | {r.samples} | "
            f"{r.cached}/{r.pairs} | {r.requests} | {r.prompt_tokens} | {r.completion_tokens} | {format_cost(r.cost)} |"
        )
    if all(r.source != "endpoint" for r in rows):
        how = f"imported from {cfg.teacher.import_from}" if cfg.teacher.import_from else "written by a program"
        print(f"\nno requests: the rationales are {how}")
        return
    costs = [r.cost for r in rows]
    total = None if any(c is None for c in costs) else sum(costs)
    cost = f"at most {format_cost(total)}" if total is not None else "cost unknown (no price for it: --prices FILE)"
    print(
        f"\n{sum(r.requests for r in rows)} requests to {cfg.teacher.model}, {cost}; prompt tokens estimated at "
        "4 characters a token, completions counted at their max_tokens"
    )
    tests = sum(r.test_questions for r in rows)
    if tests:
        print(
            f"{tests} of the questions are test questions, asked only for the teacher's own test accuracy "
            f"(teacher.split={cfg.teacher.split}; teacher.split=auto leaves them out)"
        )


def _run_pipeline(args) -> int:
    from ftcot_jax.config import load_run_config, to_dict
    from ftcot_jax.pipeline.paper import paper_cell, paper_grid

    if args.list_paper_cells:
        for name, _ in paper_grid():
            print(name)
        return 0
    if not args.config:
        raise CLIError("ftcot run needs CONFIG (a YAML file), e.g. configs/quickstart.yaml")
    overrides = list(args.overrides) + list(args.set_overrides)
    if args.paper_cell:
        try:
            overrides = paper_cell(args.paper_cell) + overrides
        except ValueError as e:
            raise CLIError(f"{e} (list them with `ftcot run --list-paper-cells`)") from None
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.compile_only:
        return _compile_only(args, overrides)
    cfg = load_run_config(args.config, overrides)
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    if args.plan:
        _print_plan(cfg, args.prices)
        return 0
    from ftcot_jax.pipeline.run import run  # JAX and the trainer: only when something runs

    res = run(cfg)
    print(res.table)
    ran = sum(e == "ran" for _, e in res.events)
    skipped = sum(e == "skipped" for _, e in res.events)
    print(f"\nreport: {res.report_path}   wall time: {res.seconds:.0f}s   stages ran: {ran}, skipped: {skipped}")
    return 0


def add_report_parser(sub):
    p = sub.add_parser(
        "report",
        help="paper-style markdown table + PNG plots from run directories",
        description="Tasks x methods (Zero-shot, Fine-tune, Fine-tune-CoT, Diverse reasoning D), best "
        "over epochs and last epoch, beside the paper's numbers for the same student.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output directory (default: the run dir when there is one)")
    p.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    p.add_argument("--no-plots", action="store_true", help="markdown only")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from ftcot_jax.pipeline.report import write_report

    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else None)  # str: may be a gs:// URL
    if out is None:
        raise CLIError("several run directories: say where the report goes with --out DIR")
    rep = write_report(args.run_dirs, out, paper=not args.no_paper, plots=not args.no_plots)
    print(rep.table)
    print(f"\nreport: {rep.path}" + (f"; plots: {', '.join(str(p) for p in rep.plots)}" if rep.plots else ""))
    return 0


def add_parsers(sub) -> None:
    add_curate_parser(sub)
    add_run_parser(sub)
    add_report_parser(sub)


def _compile_only(args, overrides: list[str]) -> int:
    """`ftcot run CONFIG --compile-only --topology NAME`: the run's cells compiled for a slice, not run."""
    if not args.topology:
        raise CLIError("--compile-only needs --topology (a TPU slice such as v5e-8, or cpu)")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiling for other devices: this process runs nothing
    from ftcot_jax.aot.config import train_config_of_run
    from ftcot_jax.aot.grid import compile_cells, failures, grid_table
    from ftcot_jax.aot.topology import TopologyError, parse
    from ftcot_jax.config import load_run_config
    from ftcot_jax.pipeline.paper import paper_grid, paper_key

    try:
        sl = None if args.topology.lower() == "cpu" else parse(args.topology, args.num_slices)
    except TopologyError as e:
        raise CLIError(str(e)) from None
    base = load_run_config(args.config, overrides)
    if args.paper_cell or paper_key(base.student.model or "") is None:
        cells = [(args.paper_cell or base.run_dir, base)]
    else:  # the paper grid: every cell on top of CONFIG (and the overrides, which win)
        cells = [(name, load_run_config(args.config, cell + overrides)) for name, cell in paper_grid()]
    try:
        rows = compile_cells([(n, train_config_of_run(c)) for n, c in cells], sl)
    except TopologyError as e:
        raise CLIError(str(e)) from None
    print(grid_table(rows, sl))
    if args.json:
        from ftcot_jax.files import write_json_atomic

        write_json_atomic(args.json, [{"cells": r.cells, **r.json} for r in rows])
    bad = failures(rows, sl)
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0
