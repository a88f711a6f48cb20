"""`ftcot tasks list|show|tfds`: the 12 reasoning tasks."""

from __future__ import annotations

import sys



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
    show.add_argument("--template", default="zs_cot",
                      help="zs | zs_cot | fs_cot | ft_token | ft_cot_token | ft_cot_natural | all (default zs_cot)")
    show.add_argument("--model-type", default="decoder", choices=("decoder", "encoder_decoder"))
    show.set_defaults(func=_tasks_show)
    tf = tsub.add_parser("tfds", help="build a task as a tensorflow-datasets ArrayRecord dataset (no TF needed)")
    tf.add_argument("task")
    tf.add_argument("--data-dir", default=None, help="tfds data_dir (default ~/tensorflow_datasets)")
    tf.set_defaults(func=_tasks_tfds)


def _tasks_list(args):
    from ftcot_jax.tasks.show import list_tasks

    list_tasks(sys.stdout)


def _tasks_show(args):
    from ftcot_jax.tasks.show import show_task

    show_task(sys.stdout, args.task, split=args.split, n=args.n, template=args.template,
              model_type=args.model_type, split_name=args.split_name, start=args.start)


def _tasks_tfds(args):
    from ftcot_jax.tasks.tfds_builder import prepare

    b = prepare(args.task, args.data_dir)
    sizes = ", ".join(f"{k}={v.num_examples}" for k, v in sorted(b.info.splits.items()))
    print(f"{b.info.full_name}: {sizes} at {b.data_dir} (read with tfds.data_source or builder.as_data_source)")


def add_parsers(sub) -> None:
    add_tasks_parser(sub)
