"""`ftcot curate`, `ftcot run`, `ftcot report`: the pipeline and its reports."""

from __future__ import annotations



def add_curate_parser(sub) -> None:
    p = sub.add_parser("curate", help="teacher cache -> fine-tune sample files (keep correct rationales)",
                       description="Fine-tune-CoT (ft_cot: greedy completion 0), diverse reasoning (diverse: all "
                       "correct of D samples) or vanilla fine-tuning (ft: gold answers) samples of the train split, "
                       "written to <out-dir>/<task>__<key>.tfrecord for `ftcot train`.")
    p.add_argument("--task", action="append", required=True, help="task name (repeatable)")
    p.add_argument("--method", choices=("ft_cot", "diverse", "ft"), default="ft_cot")
    p.add_argument("--teacher-model", default=None, help="teacher whose cache to read (ft_cot, diverse)")
    p.add_argument("--temperature", type=float, default=None, help="teacher temperature (default 0 ft_cot, 0.7 diverse)")
    p.add_argument("--samples", type=int, default=8, metavar="D", help="diverse: completions per question (default 8)")
    p.add_argument("--split-name", default="default", help='split file ("default", or "template")')
    p.add_argument("--cache-dir", default=None, help="cache root (default $FTCOT_TEACHER_CACHE or ./teacher_cache)")
    p.add_argument("--out-dir", default="samples", help="where sample files go (default ./samples)")
    p.set_defaults(func=_run_curate)


def _run_curate(args) -> int:
    from ftcot_jax.curate import curate_command

    return curate_command(args)







def add_run_parser(sub):
    p = sub.add_parser("run", help="teach -> curate -> train -> evaluate -> report, resumable (docs/pipeline.md)",
                       description="Run the whole pipeline from a YAML config. Stages whose outputs are present "
                                   "and made by the same configuration are skipped; an interrupted training "
                                   "resumes from its last checkpoint. Example: ftcot run configs/quickstart.yaml "
                                   "train.epochs=2 eval.limit=50")
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config (configs/quickstart.yaml, configs/paper/...)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.optim.lr=1e-4 (right after CONFIG; after options use --set)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_overrides",
                   help="an override that may also come after options (repeatable)")
    p.add_argument("--run-dir", default=None, help="same as run_dir=PATH")
    p.add_argument("--paper-cell", default=None, metavar="STUDENT/TASK/METHOD",
                   help="one cell of the paper's grid (e.g. gpt2/multiarith/ft_cot) on top of CONFIG")
    p.add_argument("--list-paper-cells", action="store_true", help="print the paper grid's cells and exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_run_pipeline)


def _run_pipeline(args):
    from ftcot_jax.pipeline import run_command

    return run_command(args)







def add_report_parser(sub):
    p = sub.add_parser("report", help="paper-style markdown table + PNG plots from run directories",
                       description="Tasks x methods (Zero-shot, Fine-tune, Fine-tune-CoT, Diverse reasoning D), best "
                                   "over epochs and last epoch, beside the paper's numbers for the same student.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output directory (default: the run dir when there is one)")
    p.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    p.add_argument("--no-plots", action="store_true", help="markdown only")
    p.set_defaults(func=_run_report)


def _run_report(args):
    from ftcot_jax.report import report_command

    return report_command(args)


def add_parsers(sub) -> None:
    add_curate_parser(sub)
    add_run_parser(sub)
    add_report_parser(sub)
