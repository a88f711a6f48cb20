"""The `ftcot` command line: one subcommand per pipeline stage.

Parsers are declared here; each handler imports its stage module lazily so that
`ftcot tasks list` does not pay for importing JAX or PyTorch.
Each block below belongs to one stage; keep stage logic in the stage module, not here.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


# Each stage block appends its `add_<stage>_parser(sub)` function (in pipeline order).
_SUBCOMMANDS: list = []


# --- tasks (issue 2) -------------------------------------------------------


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


_SUBCOMMANDS.append(add_tasks_parser)


# --- models / decode (issue 3) ---------------------------------------------


def add_models_parser(sub):
    g = sub.add_parser("generate", help="generate text with a student model (greedy or sampled)",
                       description="MODEL: an HF dir, an HF hub id, smollm2-135m-instruct, or a .gguf file.")
    g.add_argument("model")
    g.add_argument("prompts", nargs="+", help="one or more prompts (decoded together in batches)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.set_defaults(func=_models_generate)
    e = sub.add_parser("export-hf", help="write MODEL as an HF directory (config.json + safetensors + tokenizer)")
    e.add_argument("model")
    e.add_argument("out_dir")
    e.set_defaults(func=_models_export)


def _models_generate(args):
    import jax

    from ftcot_jax import decode, models

    model, tok = models.load(args.model)
    if tok is None:
        raise CLIError(f"{args.model} has no tokenizer files; cannot encode prompts")
    prompts = args.prompts
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise CLIError(f"{args.model}: tokenizer has no chat template (drop --chat)")
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    rng = jax.random.key(args.seed) if args.temperature > 0 else None
    gens = decode.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                           stop=args.stop, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           rng=rng)
    for p, g in zip(args.prompts, gens):
        if len(gens) > 1:
            print(f"### {p}  [{g.finish_reason}, {len(g.token_ids)} tokens]")
        print(g.text)


def _models_export(args):
    from ftcot_jax import models

    model, tok = models.load(args.model)
    models.save_hf(model, tok, args.out_dir)
    print(f"wrote {args.out_dir} (model_type={models.model_type_of(model)})")


_SUBCOMMANDS.append(add_models_parser)


# --- teacher, cache, curate (issue 5) --------------------------------------


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


_SUBCOMMANDS.append(add_teach_parser)


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


_SUBCOMMANDS.append(add_cache_parser)


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


_SUBCOMMANDS.append(add_curate_parser)


# --- train (issue 4) -------------------------------------------------------


def add_train_parser(sub):
    p = sub.add_parser("train", help="fine-tune a student on fine-tune samples (sharded, resumable; docs/multihost.md)",
                       description="Fine-tune a student (GPT-2, Llama-family, T5) with AdamW on fine-tune sample "
                                   "files, evaluating on the task's test split every epoch. Resumes automatically "
                                   "from the newest checkpoint in the run directory. Precedence: --config file < "
                                   "flags < --set. Example: ftcot train --config run.yaml --set optim.lr=1e-4")
    p.add_argument("--config", default=None, help="YAML run config (keys of ftcot_jax.config.TrainConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. mesh.fsdp=2 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run directory (checkpoints, metrics, predictions, export)")
    p.add_argument("--model", default=None, help="HF dir / hub id / smollm2-135m-instruct / .gguf")
    p.add_argument("--samples", nargs="+", default=None, metavar="FILE", help="fine-tune sample files")
    p.add_argument("--task", default=None, help="without --samples: build samples from this task's gold data")
    p.add_argument("--method", default=None, choices=("ft", "ft_cot"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="require a checkpoint in the run dir and continue from it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=_run_train)

    g = sub.add_parser("gold-samples", help="write fine-tune samples from a task's gold answers (ft) or rationales (ft_cot)")
    g.add_argument("--task", required=True)
    g.add_argument("--method", required=True, choices=("ft", "ft_cot"))
    g.add_argument("--out", required=True, help="output sample file (TFRecord, records.write_samples)")
    g.add_argument("--split-name", default="default")
    g.set_defaults(func=_run_gold_samples)


def _run_train(args):
    import json

    from ftcot_jax.config import load_config, to_dict

    flags = {"run_dir": args.run_dir, "model": args.model, "samples": args.samples, "task": args.task,
             "method": args.method, "epochs": args.epochs}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        return 0
    from ftcot_jax.train import train

    result = train(cfg, require_checkpoint=args.resume)
    summary = {"run_dir": str(result.run_dir), "steps": result.steps, "best_over_epochs": result.best,
               "last_epoch": result.last, "truncated_prompts": result.truncated_prompts,
               "truncated_labels": result.truncated_labels}
    import jax

    if jax.process_index() == 0:
        print(json.dumps(summary, default=str))
    return 0


def _run_gold_samples(args):
    from ftcot_jax.batching import write_gold_samples

    n = write_gold_samples(args.task, args.method, args.out, args.split_name)
    print(f"wrote {n} {args.method} samples for {args.task} to {args.out}")
    return 0


_SUBCOMMANDS.append(add_train_parser)


# --- serve (issue 6) -------------------------------------------------------


def add_serve_parser(sub):
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a checkpoint (docs/serve.md)",
                       description="Serve CHECKPOINT (an HF-format directory, or a name models.load accepts "
                                   "such as smollm2-135m-instruct) on /v1/models, /v1/completions and "
                                   "/v1/chat/completions, batching concurrent requests.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $FTCOT_API_KEY; none if unset)")
    p.add_argument("--model-id", default=None, help="model name clients send (default: checkpoint dir name)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together in one batch")
    p.add_argument("--max-new-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt in tokens (default: model context - 1)")
    p.add_argument("--max-prompt-chars", type=int, default=None,
                   help="longest prompt in characters, checked before tokenizing (default: 16 x max prompt tokens)")
    p.add_argument("--max-n", type=int, default=8, help="largest n (completions per prompt)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long to wait for more requests to join a batch")
    p.add_argument("--max-queue", type=int, default=1024, help="queued requests beyond this get a 503")
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    import os

    from ftcot_jax import serve

    if args.batch_window_ms < 0:
        raise CLIError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    api_key = args.api_key if args.api_key is not None else (os.environ.get("FTCOT_API_KEY") or None)
    serve.serve(args.checkpoint, dict(
        model_id=args.model_id, host=args.host, port=args.port, api_key=api_key, max_batch=args.max_batch,
        max_new_tokens_limit=args.max_new_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
        max_prompt_chars=args.max_prompt_chars, max_n=args.max_n, batch_window_s=args.batch_window_ms / 1000,
        max_queue=args.max_queue))
    return 0


_SUBCOMMANDS.append(add_serve_parser)


# --- run (issue 6) ---------------------------------------------------------


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


_SUBCOMMANDS.append(add_run_parser)


# --- report (issue 6) ------------------------------------------------------


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


_SUBCOMMANDS.append(add_report_parser)


# --- compare (issue 7) -----------------------------------------------------


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


_SUBCOMMANDS.append(add_compare_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftcot",
        description="Fine-tune-CoT in JAX: teach -> curate -> train -> evaluate -> report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"ftcot {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Library errors are written to be read by users: one line, no traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ftcot {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
