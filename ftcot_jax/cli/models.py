"""`ftcot ask`, `ftcot evaluate`, `ftcot generate` and `ftcot export-hf`: use, score and convert a student model.

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
    a.add_argument(
        "--explain", action="store_true", help="a step_by_step student: also ask for its rationale (its explain task)"
    )
    _add_sampling(a, "answers per question, sampled, then a majority vote (self-consistency); 1 = greedy")
    a.set_defaults(func=_models_ask)
    v = sub.add_parser(
        "evaluate",
        help="score a trained student on a task's test (or train) split: greedy accuracy, and maj@K / pass@K",
        description="Evaluates STUDENT as its training evaluation does (its method's prompt, the task's reference "
        "answer parsing), without training; with --samples K > 1 also K sampled completions per question "
        "(K rows per question in the same decode calls) and their majority vote. Writes OUT/predictions/"
        "epoch_NNN.jsonl, epoch_NNN.samples.jsonl (the votes) and OUT/results.json.",
    )
    v.add_argument("model", metavar="STUDENT", help=MODEL_HELP)
    v.add_argument("--task", default=None, help="default: the task the student was trained on")
    v.add_argument("--split", default="test", choices=("test", "train"))
    v.add_argument("--split-name", default="default")
    v.add_argument("--out", default=None, help="output dir; default: STUDENT's train dir /evaluate/<task>-<split>-kK")
    _add_step(v)
    v.add_argument("--limit", type=int, default=0, help="only the first N questions (0 = all)")
    v.add_argument("--max-new-tokens", type=int, default=None, help="default: its training evaluation's budget")
    v.add_argument("--batch-size", type=int, default=32, help="rows per decode batch")
    _add_sampling(v, "sampled completions per question for maj@K and pass@K; 1 = greedy only")
    v.set_defaults(func=_models_evaluate)
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


def _add_sampling(p, samples_help: str) -> None:
    p.add_argument("--samples", type=int, default=1, metavar="K", help=samples_help)
    p.add_argument("--temperature", type=float, default=0.7, help="of the K samples (default 0.7)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the samples")


def _check_sampling(args) -> None:
    """--samples and --temperature, checked before any model is loaded."""
    from ftcot_jax.self_consistency import check_samples

    try:
        check_samples(args.samples, args.temperature)
    except ValueError as e:
        raise CLIError(f"--{e}") from None


def _eval_section(args, max_new_tokens: int):
    from ftcot_jax.config import EvalSection

    return EvalSection(
        limit=getattr(args, "limit", 0),
        batch_size=args.batch_size,
        max_new_tokens=max_new_tokens,
        samples=args.samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def _trained_student(args):
    from ftcot_jax.trained import load_student

    student = load_student(args.model, step=_step(args.step))
    if student.trained is None:
        raise CLIError(
            f"{args.model} is not a fine-tuned student (no training format); use `ftcot generate` for raw prompts"
        )
    if student.tokenizer is None:
        raise CLIError(f"{args.model} has no tokenizer files; cannot encode questions")
    return student


def _models_evaluate(args):
    from pathlib import Path

    from ftcot_jax.trained import evaluate_student

    _check_sampling(args)
    student = _trained_student(args)
    fmt = student.trained
    cfg = _eval_section(args, args.max_new_tokens or fmt.max_new_tokens)
    task = args.task or fmt.task
    out = args.out
    if out is None:
        if not Path(student.source).parent.name == "checkpoints":
            raise CLIError(f"{args.model}: not a train dir, so no default output dir; give --out DIR")
        out = Path(student.source).parent.parent / "evaluate" / f"{task}-{args.split}-k{args.samples}"
    res = evaluate_student(student, out, task=task, split=args.split, split_name=args.split_name, eval_cfg=cfg)
    s = res["summary"]
    line = (
        f"{task} {args.split} ({s['n']} questions), {fmt.method} step {fmt.step}: accuracy {100 * s['accuracy']:.2f}%"
    )
    if args.samples > 1:
        k = args.samples
        line += f", maj@{k} {100 * s['maj_accuracy']:.2f}%, pass@{k} {100 * s['pass_accuracy']:.2f}%"
    print(line)
    print(f"wrote {out}/results.json and {out}/predictions/")


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

    import jax

    from ftcot_jax import decode, self_consistency

    _check_sampling(args)
    student = _trained_student(args)
    fmt = student.trained
    max_new = args.max_new_tokens or fmt.max_new_tokens
    k = args.samples
    if args.explain and fmt.method != "step_by_step":
        raise CLIError(
            f"--explain: {args.model} is a {fmt.method} student; only step_by_step students learnt to explain"
        )
    rows = [fmt.prompt(q) for q in args.questions for _ in range(k)]
    sampled = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, rng=jax.random.key(args.seed))
    gens = decode.generate(
        student.model,
        student.tokenizer,
        rows,
        max_new_tokens=max_new,
        batch_size=k * max(1, args.batch_size // k),
        **(sampled if k > 1 else {}),
    )
    explained = [None] * len(args.questions)
    if args.explain:
        explained = [
            g.text
            for g in decode.generate(
                student.model,
                student.tokenizer,
                [fmt.explain_prompt(q) for q in args.questions],
                max_new_tokens=max_new,
                batch_size=args.batch_size,
            )
        ]
    if not args.json:
        print(f"# {student.source}: {fmt.task}, {fmt.method}, step {fmt.step} ({fmt.selection})")
    for i, q in enumerate(args.questions):
        mine = gens[i * k : (i + 1) * k]
        parsed = [fmt.parse(g.text) for g in mine]
        winner, tally = self_consistency.majority([p.answer for p in parsed])
        if args.json:
            outs = [
                {"completion": g.text, "finish_reason": g.finish_reason, "rationale": p.rationale, "answer": p.answer}
                for g, p in zip(mine, parsed, strict=True)
            ]
            out = (
                {"question": q, **outs[0]}
                if k == 1
                else {"question": q, "samples": outs, "votes": tally, "answer": winner}
            )
            print(json.dumps(out, ensure_ascii=False))
            continue
        print(f"Q: {q}")
        if args.explain:
            print(f"explanation: {explained[i]}")
        for j, (g, p) in enumerate(zip(mine, parsed, strict=True)):
            tag = f"[{j + 1}/{k}] " if k > 1 else ""
            if p.rationale is not None:
                print(f"{tag}rationale: {p.rationale}")
            print(f"{tag}answer: {p.answer if p.answer is not None else '(none parsed)'}")
            if g.finish_reason != "stop":
                print(f"{tag}(stopped at {max_new} new tokens before the student finished; --max-new-tokens raises it)")
        if k > 1:
            counts = ", ".join(f"{a} x{n}" for a, n in tally) or "no sample parsed"
            print(f"vote: {winner if winner is not None else '(none)'} ({counts})")


def add_parsers(sub) -> None:
    add_models_parser(sub)
