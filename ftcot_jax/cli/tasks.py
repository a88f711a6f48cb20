"""`ftcot tasks list|show|tfds`: the 12 reasoning tasks as text (plain print, no extra dependency)."""

from __future__ import annotations

import sys
from typing import TextIO

from ftcot_jax import prompts
from ftcot_jax.tasks import TASK_NAMES, Task, load_task


def add_tasks_parser(sub):
    p = sub.add_parser("tasks", help="the 12 reasoning tasks: list them, show examples and prompts")
    tsub = p.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    ls = tsub.add_parser("list", help="table of tasks with sizes, answer type, gold rationale")
    ls.set_defaults(func=_tasks_list)
    show = tsub.add_parser("show", help="print examples of a task and their formatted prompts")
    show.add_argument("task", help="task name (see `ftcot tasks list`)")
    show.add_argument("--split", default="test", choices=("train", "test"))
    show.add_argument("--split-name", default="default", help="split file: default | template (multiarith, date)")
    show.add_argument("-n", type=int, default=3, help="number of examples (default 3)")
    show.add_argument("--start", type=int, default=0, help="position in the split to start from")
    show.add_argument(
        "--template",
        default="zs_cot",
        help="zs | zs_cot | fs_cot | ft_token | ft_cot_token | ft_cot_natural | all (default zs_cot)",
    )
    show.add_argument("--model-type", default="decoder", choices=("decoder", "encoder_decoder"))
    show.set_defaults(func=_tasks_show)
    tf = tsub.add_parser("tfds", help="build a task as a tensorflow-datasets ArrayRecord dataset (no TF needed)")
    tf.add_argument("task")
    tf.add_argument("--data-dir", default=None, help="tfds data_dir (default ~/tensorflow_datasets)")
    tf.set_defaults(func=_tasks_tfds)


_AQUA_NOTE = (
    "* AQuA: the 254 test rows are bundled; the train split (10,000 of the official 97,467 train rows) "
    "is downloaded from deepmind/AQuA on first use (see `ftcot_jax.tasks.aqua`)."
)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def list_tasks(out: TextIO) -> None:
    """One row per task: sizes from the bundled split files (the AQuA train size needs no download)."""
    rows = [["task", "name", "examples", "train", "test", "answer type", "gold rationale", "few-shot-CoT"]]
    for name in TASK_NAMES:
        t = load_task(name)
        star = "*" if name == "aqua" else ""
        rows.append(
            [
                name,
                t.display_name,
                f"{t.num_examples}{star}",
                f"{len(t.split_indices('train'))}{star}",
                str(len(t.split_indices("test"))),
                t.answer_type,
                "yes" if t.has_rationale else "no",
                "yes" if t.few_shot_cot_prompt else "no",
            ]
        )
    for line in _table(rows, right={2, 3, 4}):
        print(line, file=out)
    print(_AQUA_NOTE, file=out)
    print(
        "Template splits (paper App. E.3): multiarith 413/187, date_understanding 261/108 (--split-name template).",
        file=out,
    )


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + line for line in text.split("\n"))


def _templates_for(template: str, model_type: str, task: Task) -> list[str]:
    if template != "all":
        return [template]
    names = ["zs", "zs_cot", "fs_cot", "ft_token", "ft_cot_token", "ft_cot_natural"]
    if model_type == "encoder_decoder":
        names = [n for n in names if n not in ("zs_cot", "ft_cot_natural")]
    if task.few_shot_cot_prompt is None:
        names.remove("fs_cot")
    return names


def show_task(
    out: TextIO,
    name: str,
    *,
    split: str = "test",
    n: int = 3,
    template: str = "zs_cot",
    model_type: str = "decoder",
    split_name: str = "default",
    start: int = 0,
) -> None:
    """Print `n` examples of a split from position `start`, with the prompt (and label) of `template`."""
    if n < 0 or start < 0:
        raise ValueError(f"-n and --start must be >= 0; got n={n}, start={start}")
    if template != "all" and template not in prompts.TEMPLATES:
        raise ValueError(f"unknown template '{template}'; expected 'all' or one of: {', '.join(prompts.TEMPLATES)}")
    task = load_task(name)
    indices = task.split_indices(split, split_name)
    chosen = [task.example(i) for i in indices[start : start + n]]  # may fetch AQuA train: fail before printing
    print(
        f"{task.name} ({task.display_name}): split {split!r} of {split_name!r} has {len(indices)} examples; "
        f"showing {len(chosen)} from position {start}",
        file=out,
    )
    templates = _templates_for(template, model_type, task)
    for ex in chosen:
        print(f"\n=== sample_index {ex.sample_index} ===", file=out)
        print("question:\n" + _indent(ex.question), file=out)
        print(f"answer: {ex.answer!r}", file=out)
        if ex.rationale is not None:
            print("gold rationale:\n" + _indent(ex.rationale), file=out)
        for t in templates:
            text = prompts.prompt(t, model_type, ex.question, task.few_shot_cot_prompt)
            print(f"--- {t} ({model_type}) prompt: {text!r}", file=out)
            if t in prompts.FINETUNE_TEMPLATES:
                # Fine-tune-CoT labels use the teacher's rationale; show the gold one or a placeholder.
                rationale = ex.rationale if ex.rationale is not None else "<teacher rationale>"
                label = prompts.finetune_label(t, model_type, ex.answer, rationale)
                print(f"--- {t} ({model_type}) label:  {label!r}", file=out)


def _tasks_list(args):
    list_tasks(sys.stdout)


def _tasks_show(args):
    show_task(
        sys.stdout,
        args.task,
        split=args.split,
        n=args.n,
        template=args.template,
        model_type=args.model_type,
        split_name=args.split_name,
        start=args.start,
    )


def _tasks_tfds(args):
    from ftcot_jax.tasks.tfds_builder import prepare  # imports tensorflow_datasets

    b = prepare(args.task, args.data_dir)
    sizes = ", ".join(f"{k}={v.num_examples}" for k, v in sorted(b.info.splits.items()))
    print(f"{b.info.full_name}: {sizes} at {b.data_dir} (read with tfds.data_source or builder.as_data_source)")


def add_parsers(sub) -> None:
    add_tasks_parser(sub)
