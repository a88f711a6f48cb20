"""Step 1 of `ftcot compare --to-the-end`, in the driver's process: the inputs both systems share, made once.

From the run config (`EndSection.run_config` + overrides): the curated samples of (task, method) by our pipeline's
own teach and curate stages (`pipeline.run.teach` / `pipeline.run.curate`, in `<out>/pipeline`), the pretrained
student exported once as an HF directory (`init/`, which both systems load), the trainer's config of that cell
(`pipeline.run.train_config`: the run's epochs, batch, lengths, optimizer, evaluation), every epoch's batches cut by
the trainer's own `train.batches.Batcher` (`batches/epoch_NNN.npz`, for the PyTorch loop) and the test questions with
their prompts (`eval.json`). `manifest.json` records it; a second call on the same directory reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np

from ftcot_jax import models, prompts
from ftcot_jax import samples as sample_files
from ftcot_jax.config import TrainConfig, load_run_config, save_config, to_dict
from ftcot_jax.config.compare import CompareSpec
from ftcot_jax.files import write_json_atomic
from ftcot_jax.models import api
from ftcot_jax.models.gguf import ALIASES
from ftcot_jax.pipeline import run as pipeline
from ftcot_jax.pipeline.curate import Method
from ftcot_jax.tasks import load_task
from ftcot_jax.train.batches import Batcher, encode_samples

MANIFEST = "manifest.json"


def run_config(spec: CompareSpec, out: Path):
    """The run config of the comparison, its run_dir moved into `<out>/pipeline`; (RunConfig, task)."""
    path = Path(spec.end.run_config)
    if not path.is_file():
        raise FileNotFoundError(
            f"end.run_config {spec.end.run_config!r}: no such file (expected a run config YAML, e.g. "
            "configs/paper/real_teacher_smollm2.yaml from the repository root)"
        )
    cfg = load_run_config(path, [*spec.end.overrides, f"run_dir={out / 'pipeline'}"])
    task = spec.end.task or cfg.tasks[0]
    return cfg, task


def check_pretrained(cfg) -> None:
    """Both systems must start from the same pretrained weights: a student without local weights is an error."""
    s = cfg.student
    if s.from_scratch or s.model_config:
        raise ValueError(
            "to_the_end compares pretrained students; the run config's student is a random init "
            "(student.from_scratch / student.model_config), which PyTorch cannot load"
        )
    if s.model.lower() not in ALIASES and not Path(s.model).exists():
        raise ValueError(
            f"student.model {s.model!r}: no local weights (expected an HF model directory, a .gguf file or one "
            f"of {', '.join(ALIASES)}); both systems must load the same pretrained weights"
        )


def trainer_config(cfg, task: str, method: Method, samples_path: Path, out: Path) -> TrainConfig:
    """The pipeline's trainer config of (task, method), run in `<out>/jax/run`, evaluated after every epoch."""
    tc = pipeline.train_config(cfg, task, method, samples_path)
    o = tc.optim
    if o.decay != "none" or o.warmup_steps or o.clip_grad_norm:
        raise ValueError(
            "to_the_end follows the reference's optimizer (constant lr, no warm-up, no clipping) in both systems; "
            f"the run config sets optim.decay={o.decay!r}, warmup_steps={o.warmup_steps}, "
            f"clip_grad_norm={o.clip_grad_norm}"
        )
    if tc.grad_accum != 1:
        raise ValueError(f"to_the_end trains one batch per step in both systems; grad_accum={tc.grad_accum}")
    return dataclasses.replace(
        tc,
        run_dir=str(out / "jax" / "run"),
        student=dataclasses.replace(tc.student, model=str(out / "init")),
        eval=dataclasses.replace(tc.eval, every_epochs=1),
        max_steps=0,
        export=False,
    )


def prepare_end(spec: CompareSpec, out: Path, log=print) -> dict:
    """Curate, export the student, cut every epoch's batches, write the eval items; the manifest.
    An existing manifest of the same spec is returned as it is (a resumed comparison)."""
    out.mkdir(parents=True, exist_ok=True)
    spec_dict = to_dict(spec)
    if (out / MANIFEST).exists():
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest["spec"]["end"] != spec_dict["end"]:
            raise ValueError(
                f"{out} holds a to_the_end comparison of another run config, task or method "
                f"({manifest['spec']['end']}); use another out_dir"
            )
        return manifest
    cfg, task = run_config(spec, out)
    check_pretrained(cfg)
    method = Method(spec.end.method, spec.end.method)
    if method.kind == "ft_cot":
        pipeline.teach(cfg, task, "ft_cot", log)
    samples_path = pipeline.curate(cfg, task, method, out / "samples" / f"{task}__{method.key}.tfrecord", log)

    model, tok = models.load(cfg.student.model)
    models.save_hf(model, tok, out / "init")
    model_type = api.model_kind(model)
    eos_ids = api.eos_ids(model) if model_type == "encoder_decoder" else api.eos_ids(model, tok)
    start = getattr(model.config, "decoder_start_token_id", None)
    n_params = api.count_params(model)
    del model

    tc = trainer_config(cfg, task, method, samples_path, out)
    save_config(tc, out / "train_config.json")
    samples = sample_files.load_samples([samples_path])
    batches_per_epoch = write_batches(tc, samples, tok, model_type, start, out / "batches")

    examples = load_task(task).split("test", cfg.split_name)
    if tc.eval.limit:
        examples = examples[: tc.eval.limit]
    template = prompts.METHOD_TEMPLATE[tc.method]
    items = [
        {
            "sample_index": ex.sample_index,
            "question": ex.question,
            "answer": ex.answer,
            "prompt": prompts.prompt(template, model_type, ex.question),
        }
        for ex in examples
    ]
    write_json_atomic(out / "eval.json", items, indent=1)
    manifest = {
        "spec": spec_dict,
        "task": task,
        "method": method.key,
        "template": template,
        "student": cfg.student.model,
        "model_type": model_type,
        "n_params": n_params,
        "samples": len(samples),
        "samples_path": str(samples_path),
        "epochs": tc.epochs,
        "steps_per_epoch": batches_per_epoch,
        "batch_size": tc.batch_size,
        "eval_n": len(items),
        "eval_batch_size": tc.eval.batch_size,
        "max_new_tokens": tc.eval.max_new_tokens,
        "eos_ids": eos_ids,
        "optim": dataclasses.asdict(tc.optim),
        "precision": tc.precision,
        "dropout": tc.dropout,
        "seed": tc.seed,
    }
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    log(
        f"prepared {task} {method.key}: {len(samples)} curated samples, {tc.epochs} epochs of {batches_per_epoch} "
        f"steps (batch {tc.batch_size}), {len(items)} test questions, student {cfg.student.model} -> {out}"
    )
    return manifest


def write_batches(tc: TrainConfig, samples, tok, model_type: str, start, out: Path) -> int:
    """Every epoch's batches as the trainer cuts them (`train.batches`, the trainer's arguments, one process),
    one .npz per epoch; returns the steps per epoch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trainer counts and reports truncation itself
        enc = encode_samples(samples, tok, model_type=model_type, max_length=tc.max_length)
    pad = api.tokenizer_pad_id(tok)
    batcher = Batcher(enc, tc.batch_size, tc.grad_accum, tc.seed, tc.bucket, pad, pad if start is None else start, 0, 1)
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(tc.epochs):
        arrays = {}
        for i in range(batcher.steps_per_epoch):
            for k, v in batcher.batch(epoch, i).items():
                arrays[f"{i:05d}/{k}"] = v
        np.savez(out / f"epoch_{epoch:03d}.npz", **arrays)
    return batcher.steps_per_epoch
