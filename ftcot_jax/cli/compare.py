"""`ftcot compare`: ftcot-jax beside the PyTorch reference."""

from __future__ import annotations

import argparse
import os

from ftcot_jax.cli.common import CLIError, add_config_arguments, config_overrides, print_config

# flag dest -> CompareSpec key (the flags are shorthands for `--set key=value`)
FLAG_KEYS = {
    "model": "model",
    "tokenizer": "tokenizer",
    "task": "task",
    "method": "method",
    "out": "out_dir",
    "steps": "steps",
    "warmup_steps": "warmup_steps",
    "batch_size": "batch_size",
    "seq_len": "seq_len",
    "lr": "lr",
    "precisions": "precisions",
    "torch_modes": "torch_modes",
    "repeats": "repeats",
    "eval_n": "eval_n",
    "eval_batch_size": "eval_batch_size",
    "max_new_tokens": "max_new_tokens",
    "threads": "threads",
    "xla_flags": "xla_flags",
    "pack_multiple": "pack_multiple",
}
# --to-the-end: these flags set the `end` section's keys instead
END_FLAG_KEYS = {"task": "end.task", "method": "end.method", "run_config": "end.run_config"}
LIST_FLAGS = ("precisions", "torch_modes")  # comma-separated on the command line


def add_compare_parser(sub):
    p = sub.add_parser(
        "compare",
        help="ftcot-jax vs the PyTorch reference trainer on the same job (docs/compare.md)",
        description="Train the same student on the same batches with ftcot-jax and with the PyTorch "
        "baseline (HF transformers + torch.optim.AdamW; eager and torch.compile; fp32 and "
        "bf16), then greedy-evaluate both; writes compare.md/json and loss_curves.png. "
        "Every key of ftcot_jax.config.CompareSpec can be set with --set (e.g. --set "
        "jax_devices=2); the flags below are shorthands. Precedence: --config file < "
        "flags < --set < --quick.",
    )
    add_config_arguments(p, "CompareSpec", "precisions=[fp32] or timeout_s=600")
    p.add_argument(
        "--model", help="gpt2-small (default) | t5-small (random init) | smollm2-135m-instruct | HF dir | .gguf"
    )
    p.add_argument("--tokenizer", help="tokenizer dir for the random-init presets (default: SmolLM2's)")
    p.add_argument("--task", help="training samples = this task's gold rationales/answers (default gsm8k)")
    p.add_argument("--method", choices=("ft", "ft_cot"), help="default ft_cot")
    p.add_argument("--out", help="output directory (default runs/compare)")
    p.add_argument("--steps", type=int, help="default 12")
    p.add_argument("--warmup-steps", type=int, help="steps not counted in throughput (default 2)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--seq-len", type=int, help="every batch is padded to exactly this length (default 256)")
    p.add_argument("--lr", type=float, help="default 3e-4")
    p.add_argument("--precisions", help="comma-separated (default fp32,bf16)")
    p.add_argument("--torch-modes", help="comma-separated (default eager,compile)")
    p.add_argument("--repeats", type=int, help="alternating runs per configuration (default 2)")
    p.add_argument("--eval-n", type=int, help="test prompts to greedy-decode (0 = none; default 32)")
    p.add_argument("--eval-batch-size", type=int, help="default 32")
    p.add_argument("--max-new-tokens", type=int, help="default 64")
    p.add_argument("--threads", type=int, help="CPU threads for both systems (default: all cores)")
    p.add_argument("--xla-flags", help="extra XLA_FLAGS for our runs")
    p.add_argument(
        "--pack-multiple",
        type=int,
        help="ours computes only on the tokens the loss needs, N rounded up to this (0 = on the padded "
        "batch, like the reference; default 128)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="development run: at most 4 steps, 1 repeat, eager only, fp32, 8 eval prompts",
    )
    p.add_argument(
        "--to-the-end",
        action="store_true",
        help="mode=to_the_end: a run config's student trained for its epochs in both systems on the same curated "
        "samples and batches, every epoch scored on the test split (docs/compare.md, 'Accuracy to the end'); "
        "--task/--method then pick the run config's cell; resumes per system and epoch",
    )
    p.add_argument("--run-config", help="to-the-end: the run config (default configs/paper/real_teacher_smollm2.yaml)")
    p.add_argument(
        "--run-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="to-the-end: an override of the run config, e.g. teacher.import_from=DIR (repeatable)",
    )
    p.add_argument("--probe-xla-flags", action="store_true", help=argparse.SUPPRESS)  # moved to a script
    p.set_defaults(func=_run_compare)


def _run_compare(args):
    if args.probe_xla_flags:
        raise CLIError("--probe-xla-flags moved to a script: python scripts/probe_xla_flags.py")
    # Deferred: `ftcot --help` and the other commands do not pay for importing JAX.
    from ftcot_jax.jax_setup import memory_env

    # This driver's JAX allocates on demand: it stays resident while the PyTorch workers run on the device
    # (set before its first computation, when JAX reads it).
    os.environ.update(memory_env(preallocate=False))
    from ftcot_jax.compare.prepare import check_model
    from ftcot_jax.compare.run import run_compare
    from ftcot_jax.config import load_compare_spec

    flags = {}
    keys = dict(FLAG_KEYS, **(END_FLAG_KEYS if args.to_the_end else {}))
    for dest, key in keys.items():
        value = getattr(args, dest)
        if value is not None and dest in LIST_FLAGS:
            value = [x.strip() for x in value.split(",") if x.strip()]
        flags[key] = value
    if args.to_the_end:
        flags["mode"] = "to_the_end"
        if args.run_set:
            flags["end.overrides"] = list(args.run_set)
    spec = load_compare_spec(args.config, config_overrides(flags, args.overrides), quick=args.quick)
    if spec.mode == "to_the_end":
        if args.print_config:
            print_config(spec)
            return 0
        from ftcot_jax.compare.end_run import run_end

        try:
            run_end(spec)
        except RuntimeError as e:  # a worker failed: its own one-line reason is in the message
            raise CLIError(str(e)) from None
        print(f"\nwrote {spec.out_dir}/end.md, end.json, accuracy.png")
        return 0
    check_model(spec)
    if args.print_config:
        print_config(spec)
        return 0
    report = run_compare(spec)
    print(f"\nwrote {spec.out_dir}/compare.md, compare.json, loss_curves.png")
    return 1 if report["failed"] and not report["rows"] else 0


def add_parsers(sub) -> None:
    add_compare_parser(sub)
