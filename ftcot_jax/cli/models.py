"""`ftcot generate` and `ftcot export-hf`: use and convert a student model."""

from __future__ import annotations

from ftcot_jax.cli.common import CLIError


def add_models_parser(sub):
    g = sub.add_parser(
        "generate",
        help="generate text with a student model (greedy or sampled)",
        description="MODEL: an HF dir, an HF hub id, smollm2-135m-instruct, or a .gguf file.",
    )
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

    model, tok = models.load(args.model)
    models.save_hf(model, tok, args.out_dir)
    print(f"wrote {args.out_dir} (model_type={models.model_type_of(model)})")


def add_parsers(sub) -> None:
    add_models_parser(sub)
