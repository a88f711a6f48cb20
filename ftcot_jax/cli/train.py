"""`ftcot train` and `ftcot gold-samples`."""

from __future__ import annotations

import json

from ftcot_jax.cli.common import CLIError, add_config_arguments, config_overrides, print_config


def add_train_parser(sub):
    p = sub.add_parser(
        "train",
        help="fine-tune a student on fine-tune samples (sharded, resumable; docs/multihost.md)",
        description="Fine-tune a student (GPT-2, Llama-family, T5) with AdamW on fine-tune sample "
        "files, evaluating on the task's test split every epoch. Resumes automatically "
        "from the newest checkpoint in the run directory. Precedence: --config file < "
        "flags < --set. Example: ftcot train --config run.yaml --set optim.lr=1e-4",
    )
    add_config_arguments(p, "TrainConfig", "mesh.fsdp=2")
    p.add_argument("--run-dir", default=None, help="run directory (checkpoints, metrics, predictions, export)")
    p.add_argument("--model", default=None, help="HF dir / hub id / smollm2-135m-instruct / .gguf")
    p.add_argument("--samples", nargs="+", default=None, metavar="FILE", help="fine-tune sample files")
    p.add_argument("--task", default=None, help="without --samples: build samples from this task's gold data")
    p.add_argument("--method", default=None, choices=("ft", "ft_cot", "step_by_step"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="require a checkpoint in the run dir and continue from it")
    p.set_defaults(func=_run_train)

    g = sub.add_parser(
        "gold-samples",
        help="write fine-tune samples from a task's gold answers (ft) or rationales (ft_cot, step_by_step)",
    )
    g.add_argument("--task", required=True)
    g.add_argument("--method", required=True, choices=("ft", "ft_cot", "step_by_step"))
    g.add_argument("--out", required=True, help="output sample file (TFRecord, samples.write_samples)")
    g.add_argument("--split-name", default="default")
    g.set_defaults(func=_run_gold_samples)


def _run_train(args):
    # Deferred: `ftcot --help` and the other commands do not pay for importing JAX.
    import jax

    from ftcot_jax.config import TrainConfig, load_config
    from ftcot_jax.train.checkpoint import NoCheckpointError
    from ftcot_jax.trained import train_and_export

    flags = {
        "run_dir": args.run_dir,
        "student.model": args.model,
        "samples": args.samples,
        "task": args.task,
        "method": args.method,
        "epochs": args.epochs,
    }
    cfg = load_config(args.config, config_overrides(flags, args.overrides), cls=TrainConfig)
    if args.print_config:
        print_config(cfg)
        return 0
    try:
        result = train_and_export(cfg, require_checkpoint=args.resume)
    except NoCheckpointError as e:
        raise CLIError(f"--resume: {e}") from e
    summary = {
        "run_dir": str(result.run_dir),
        "steps": result.steps,
        "best_over_epochs": result.best,
        "last_epoch": result.last,
        "truncated_prompts": result.truncated_prompts,
        "truncated_labels": result.truncated_labels,
    }
    if jax.process_index() == 0:
        print(json.dumps(summary, default=str))
    return 0


def _run_gold_samples(args):
    from ftcot_jax.samples import write_gold_samples

    n = write_gold_samples(args.task, args.method, args.out, args.split_name)
    print(f"wrote {n} {args.method} samples for {args.task} to {args.out}")
    return 0


def add_parsers(sub) -> None:
    add_train_parser(sub)
