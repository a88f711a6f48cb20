"""`ftcot ask`, `ftcot generate` and `ftcot export-hf`: use and convert a student model.

Each takes a MODEL that `trained.load_student` accepts: one of our trained students (an `ftcot run` run dir
with one student, a train dir, a checkpoint dir, an exported student) or any HF dir / hub id / alias / .gguf.
"""

from __future__ import annotations

from ftcot_jax.cli.common import CLIError

MODEL_HELP = (
    "a trained student (an `ftcot run` run dir holding one, RUN/train/<task>/<method>, .../checkpoints/<step>, "
    "or its export dir), or an HF dir, HF hub id, smollm2-135m-instruct or .gguf"
)


def _step(value: str):
    if value in ("best", "last"):
        return value
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"--step {value!r}: expected best, last or a step number") from None


def _add_step(p) -> None:
    p.add_argument(
        "--step",
        default="best",
        help="which checkpoint of a trained student: best (best test accuracy over epochs, default), last, or a step",
    )


def add_models_parser(sub):
    a = sub.add_parser(
        "ask",
        help="ask a trained student questions: its rationale and its answer, parsed as the task's evaluation does",
        description="Formats each QUESTION exactly as the student was trained (its method's template), decodes "
        "greedily, and prints the rationale and the answer parsed with the task's reference parsing.",
    )
    a.add_argument("model", metavar="STUDENT", help=MODEL_HELP)
    a.add_argument("questions", nargs="+", metavar="QUESTION")
    _add_step(a)
    a.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: the generation budget of its training evaluation"
    )
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--json", action="store_true", help="one JSON object per question instead of text")
    a.set_defaults(func=_models_ask)
    g = sub.add_parser(
        "generate",
        help="generate text with a student model (greedy or sampled)",
        description="MODEL: " + MODEL_HELP + ". Prompts are used as given (see `ftcot ask` for questions).",
    )
    g.add_argument("model", help=MODEL_HELP)
    _add_step(g)
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
    e = sub.add_parser(
        "export-hf",
        help="write MODEL as an HF directory (config.json + safetensors + tokenizer) that transformers loads",
        description="MODEL: " + MODEL_HELP + ". A trained student's export also carries its training format "
        "(ftcot_student.json), so `ftcot ask`/`serve` of the export work as on the run.",
    )
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("out_dir")
    _add_step(e)
    e.set_defaults(func=_models_export)


def _models_generate(args):
    import jax

    from ftcot_jax import decode
    from ftcot_jax.trained import load_student

    student = load_student(args.model, step=_step(args.step))
    model, tok = student.model, student.tokenizer
    if tok is None:
        raise CLIError(f"{args.model} has no tokenizer files; cannot encode prompts")
    prompts = args.prompts
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise CLIError(f"{args.model}: tokenizer has no chat template (drop --chat)")
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    rng = jax.random.key(args.seed) if args.temperature > 0 else None
    gens = decode.generate(
        model,
        tok,
        prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        stop=args.stop,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        rng=rng,
    )
    for p, g in zip(args.prompts, gens, strict=True):
        if len(gens) > 1:
            print(f"### {p}  [{g.finish_reason}, {len(g.token_ids)} tokens]")
        print(g.text)


def _models_export(args):
    from ftcot_jax import models
    from ftcot_jax.trained import export_student, load_student

    student = load_student(args.model, step=_step(args.step))
    export_student(student, args.out_dir)
    what = f"model_type={models.model_type_of(student.model)}"
    if student.trained is not None:
        t = student.trained
        what += f", {t.task} {t.method}, step {t.step} ({t.selection})"
    print(f"wrote {args.out_dir} ({what})")


def _models_ask(args):
    import json

    from ftcot_jax import decode
    from ftcot_jax.trained import load_student

    student = load_student(args.model, step=_step(args.step))
    fmt = student.trained
    if fmt is None:
        raise CLIError(
            f"{args.model} is not a fine-tuned student (no training format); use `ftcot generate` for raw prompts"
        )
    if student.tokenizer is None:
        raise CLIError(f"{args.model} has no tokenizer files; cannot encode questions")
    max_new = args.max_new_tokens or fmt.max_new_tokens
    prompts = [fmt.prompt(q) for q in args.questions]
    gens = decode.generate(
        student.model, student.tokenizer, prompts, max_new_tokens=max_new, batch_size=args.batch_size
    )
    if not args.json:
        print(f"# {student.source}: {fmt.task}, {fmt.method}, step {fmt.step} ({fmt.selection})")
    for q, g in zip(args.questions, gens, strict=True):
        parsed = fmt.parse(g.text)
        if args.json:
            out = {"question": q, "completion": g.text, "finish_reason": g.finish_reason}
            print(json.dumps({**out, "rationale": parsed.rationale, "answer": parsed.answer}, ensure_ascii=False))
            continue
        print(f"Q: {q}")
        if parsed.rationale is not None:
            print(f"rationale: {parsed.rationale}")
        print(f"answer: {parsed.answer if parsed.answer is not None else '(none parsed)'}")
        if g.finish_reason != "stop":
            print(f"(stopped at {max_new} new tokens before the student finished; --max-new-tokens raises it)")


def add_parsers(sub) -> None:
    add_models_parser(sub)
