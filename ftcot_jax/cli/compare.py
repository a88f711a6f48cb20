"""`ftcot compare`: ftcot-jax beside the PyTorch reference."""

from __future__ import annotations

from ftcot_jax.cli.common import CLIError


def add_compare_parser(sub):
    p = sub.add_parser("compare", help="ftcot-jax vs the PyTorch reference trainer on the same job (docs/compare.md)",
                       description="Train the same student on the same batches with ftcot-jax and with the PyTorch "
                                   "baseline (HF transformers + torch.optim.AdamW; eager and torch.compile; fp32 and "
                                   "bf16), then greedy-evaluate both; writes compare.md/json and loss_curves.png.")
    p.add_argument("--model", default="gpt2-small",
                   help="gpt2-small | t5-small (random init) | smollm2-135m-instruct | HF dir | .gguf")
    p.add_argument("--tokenizer", default="", help="tokenizer dir for the random-init presets (default: SmolLM2's)")
    p.add_argument("--task", default="gsm8k", help="training samples = this task's gold rationales/answers")
    p.add_argument("--method", default="ft_cot", choices=("ft", "ft_cot"))
    p.add_argument("--out", default="runs/compare", help="output directory")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup-steps", type=int, default=2, help="steps not counted in throughput")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="every batch is padded to exactly this length")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--torch-modes", default="eager,compile")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per configuration")
    p.add_argument("--eval-n", type=int, default=32, help="test prompts to greedy-decode (0 = none)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both systems (default: all cores)")
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for our runs")
    p.add_argument("--pack-multiple", type=int, default=128,
                   help="ours computes only on the tokens the loss needs, N rounded up to this (0 = on the padded "
                        "batch, like the reference)")
    p.add_argument("--quick", action="store_true",
                   help="development run: 4 steps, 1 repeat, eager only, fp32, 8 eval prompts")
    p.add_argument("--probe-xla-flags", action="store_true",
                   help="only measure matmul GFLOP/s of XLA:CPU under the oneDNN/XNNPACK flag sets and of torch")
    p.set_defaults(func=_run_compare)


def _run_compare(args):
    from ftcot_jax.compare import compare_command

    try:
        return compare_command(args)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e


def add_parsers(sub) -> None:
    add_compare_parser(sub)
