"""Step 1 of `ftcot compare`, in the driver's process: the inputs both systems share.

The student is built once (random init of a preset or `model_config`, or loaded) and exported with
`models.save_hf`, so PyTorch starts from exactly our weights; the fine-tune samples are tokenised with the
trainer's `train.batches.encode_samples` and the first `steps` batches cut with `train.batches.Batcher`,
written to `batches.npz` with a hash per batch; the eval prompts go to `eval.json`, the facts about the
job to `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np

from ftcot_jax import models, prompts
from ftcot_jax import samples as sample_files
from ftcot_jax.compare.common import DROPOUT_KEYS, canonical_batch, flops_per_token, hash_arrays
from ftcot_jax.config.compare import DEFAULT_TOKENIZER, PRESETS, CompareSpec
from ftcot_jax.files import write_json_atomic
from ftcot_jax.models.api import count_params, model_kind, tokenizer_pad_id
from ftcot_jax.models.gguf import ALIASES
from ftcot_jax.tasks import load_task
from ftcot_jax.train import batches as batching
from ftcot_jax.trained import load_student


def check_model(spec: CompareSpec) -> None:
    """A ValueError unless `model` names a preset, a GGUF alias, an existing path or a .gguf file (or
    `model_config` replaces it)."""
    m = spec.model
    if spec.model_config is not None or m in PRESETS or Path(m).exists() or m.endswith(".gguf"):
        return
    if m.lower() not in ALIASES:
        raise ValueError(
            f"model {m!r}: expected one of {', '.join(PRESETS)}, {', '.join(ALIASES)}, "
            "an HF model directory or a .gguf file"
        )


def _load_tokenizer(name: str):
    """A tokenizer directory or the shipped DEFAULT_TOKENIZER (never a hub download)."""
    if name.lower() != DEFAULT_TOKENIZER and not Path(name).is_dir():
        raise FileNotFoundError(f"tokenizer {name!r}: expected a tokenizer directory or '{DEFAULT_TOKENIZER}'")
    return models.load_tokenizer(name)


def initial_student(spec: CompareSpec):
    """(model, tokenizer, description) of the student both systems start from: a random init of the preset
    or `model_config` (its vocabulary grown to the tokenizer's, its special ids the tokenizer's), or
    `trained.load_student(spec.model)` (a model name or path, or one of our trained students)."""
    hf = spec.model_config or PRESETS.get(spec.model)
    if hf is not None:
        tok = _load_tokenizer(spec.tokenizer or DEFAULT_TOKENIZER)
        hf = dict(hf)
        eos = tok.eos_token_id
        pad = tokenizer_pad_id(tok)
        if len(tok) > hf["vocab_size"]:
            hf["vocab_size"] = len(tok)  # e.g. the 49k SmolLM2 tokenizer on T5's 32k vocab
        hf.update(eos_token_id=eos, pad_token_id=pad)
        if hf.get("model_type") == "t5":
            hf["decoder_start_token_id"] = pad
        else:
            hf["bos_token_id"] = tok.bos_token_id if tok.bos_token_id is not None else eos
        model = models.from_config(hf, seed=spec.seed)
        return model, tok, f"random init {hf.get('model_type')} ({spec.model if not spec.model_config else 'config'})"
    loaded = load_student(spec.model)  # also a run / train dir / checkpoint of ours (its best epoch)
    model, tok = loaded.model, loaded.tokenizer
    if tok is None:
        if not spec.tokenizer:
            raise ValueError(f"{spec.model} has no tokenizer; set `tokenizer`")
        tok = _load_tokenizer(spec.tokenizer)
    return model, tok, f"loaded {spec.model}"


def _eval_items(spec: CompareSpec, model_type: str, eval_examples, template: str) -> list[dict]:
    if spec.eval_n == 0:
        return []
    if eval_examples is None:
        eval_examples = load_task(spec.task).split("test")
    return [
        {
            "sample_index": ex.sample_index,
            "answer": ex.answer,
            "prompt": prompts.finetune_input(template, model_type, ex.question),
        }
        for ex in list(eval_examples)[: spec.eval_n]
    ]


def prepare(spec: CompareSpec, out: Path, *, samples=None, eval_examples=None) -> dict:
    """Export the initial weights, cut the batches, write the eval prompts; returns the manifest.
    `samples` default to the task's gold samples, `eval_examples` to its test split."""
    out.mkdir(parents=True, exist_ok=True)
    model, tok, described = initial_student(spec)
    model_type = model_kind(model)
    init_dir = out / "init"
    models.save_hf(model, tok, init_dir)
    # Dropout off in the exported config: PyTorch trains in train() mode like the reference, and random
    # dropout masks would make the two loss curves differ by more than the arithmetic does.
    cfg_path = init_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in DROPOUT_KEYS:
        cfg[k] = 0.0
    pad = tokenizer_pad_id(tok)
    if tok.pad_token_id is None:
        cfg["pad_token_id"] = pad
    write_json_atomic(cfg_path, cfg, indent=2, sort_keys=True)
    n_params = count_params(model)
    start = getattr(model.config, "decoder_start_token_id", None)
    del model

    samples = list(samples) if samples is not None else sample_files.gold_samples(spec.task, spec.method)
    template = prompts.METHOD_TEMPLATE[samples[0].method]
    task = samples[0].task
    batches, cut = cut_batches(spec, samples, tok, model_type, start)
    arrays, hashes = {}, []
    for i, b in enumerate(batches):
        for k, v in b.items():
            arrays[f"{i:05d}/{k}"] = v
        hashes.append(hash_arrays(canonical_batch({k: v[0] for k, v in b.items()})))
    np.savez(out / "batches.npz", **arrays)
    items = _eval_items(spec, model_type, eval_examples, template)
    write_json_atomic(out / "eval.json", items, indent=1)
    eos_ids = sorted({int(tok.eos_token_id)} | ({int(pad)} if model_type == "encoder_decoder" else set()))
    manifest = {
        "model": described,
        "hf_config": cfg,
        "n_params": n_params,
        "model_type": model_type,
        "task": task,
        "template": template,
        "samples": len(samples),
        "samples_used": cut["used"],
        "samples_left_out_longer_than_seq_len": cut["left_out"],
        "steps": spec.steps,
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "batch_hashes": hashes,
        "real_tokens": cut["real_tokens"],
        "batch_sample_ids": cut["sample_ids"],
        "eval_n": len(items),
        "eos_ids": eos_ids,
        "pad_id": int(pad),
        "flops_per_token": flops_per_token(n_params, cfg, spec.seq_len),
    }
    write_json_atomic(out / "manifest.json", manifest, indent=1)
    return manifest


def cut_batches(spec: CompareSpec, samples, tok, model_type: str, decoder_start: int | None = None):
    """The first `spec.steps` batches of the trainer's own pipeline (`train.batches.encode_samples` +
    `train.batches.Batcher`), each padded to exactly `spec.seq_len`; samples longer than that are left out.
    Returns (batches, {"used", "left_out", "real_tokens", "sample_ids"})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation is counted below instead
        enc = batching.encode_samples(samples, tok, model_type=model_type, max_length=spec.seq_len)
    keep = [i for i in range(len(enc)) if _fits(enc, i, spec.seq_len)]
    if not keep:
        raise ValueError(f"no sample fits in seq_len={spec.seq_len} tokens")
    enc = dataclasses.replace(
        enc,
        source=[enc.source[i] for i in keep],
        target=[enc.target[i] for i in keep],
        sample_keys=[enc.sample_keys[i] for i in keep],
    )
    pad = tokenizer_pad_id(tok)
    start = pad if decoder_start is None else decoder_start
    batcher = batching.Batcher(enc, spec.batch_size, 1, spec.seed, spec.seq_len, pad, start)
    batches, real_tokens, sample_ids = [], [], []
    it = batcher.iterate(epochs=10**6)
    for _ in range(spec.steps):
        (epoch, index), b = next(it)
        batches.append(b)
        real_tokens.append(batcher.n_tokens(epoch, index))
        sample_ids.append([int(r) for r in batcher.rows(epoch, index).ravel()])
    return batches, {
        "used": len(keep),
        "left_out": len(enc) - len(keep),
        "real_tokens": real_tokens,
        "sample_ids": sample_ids,
    }


def _fits(enc, i: int, seq_len: int) -> bool:
    if enc.model_type == "decoder":
        return len(enc.source[i]) + len(enc.target[i]) <= seq_len
    return len(enc.source[i]) <= seq_len and len(enc.target[i]) <= seq_len
