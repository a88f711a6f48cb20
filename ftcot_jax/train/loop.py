"""The training run: `train(cfg)` fine-tunes a student and resumes from the newest checkpoint of its run dir.

    from ftcot_jax.config import load_config
    from ftcot_jax.train.loop import train
    result = train(load_config("run.yaml", ["optim.lr=1e-4"]))

Flow: distributed start-up and mesh -> student -> samples tokenised once and batched per host
(train.batches) -> `TrainSetup` (train.step) -> restore or init the state -> steps, whose metrics are
fetched one step late so the host never waits on the device -> at each epoch end, greedy evaluation on the
test split (evaluation.generate_and_score) and a checkpoint (async, atomic, exact resume) -> HF export and
`results.json`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import multihost_utils

from ftcot_jax import samples as sample_files
from ftcot_jax.config import TrainConfig, save_config, to_dict
from ftcot_jax.evaluation import generate_and_score
from ftcot_jax.files import write_json_atomic, write_jsonl_atomic
from ftcot_jax.models.api import tokenizer_pad_id
from ftcot_jax.paths import as_path, check_reachable
from ftcot_jax.prompts import METHOD_TEMPLATE
from ftcot_jax.tasks import load_task
from ftcot_jax.train.batches import Batcher, encode_samples
from ftcot_jax.train.checkpoint import Checkpoints, NoCheckpointError, abstract_like, restore_params, saved_steps
from ftcot_jax.train.mesh import make_mesh, maybe_initialize_distributed
from ftcot_jax.train.metrics import MetricsLogger, mfu, peak_flops_per_device
from ftcot_jax.train.step import setup
from ftcot_jax.train.student import build_student
from ftcot_jax.trained import LoadedStudent, export_student, training_format


@dataclasses.dataclass
class TrainResult:
    """What `train` returns (the same numbers are in run_dir/results.json and metrics.jsonl)."""

    run_dir: Path
    steps: int
    losses: dict[int, float]  # step -> loss of the steps this call ran
    history: list[dict]  # per-epoch eval summaries (whole run, resumes included)
    best: dict | None  # the reference's protocol: best test accuracy over epochs
    last: dict | None  # last evaluated epoch
    truncated_prompts: int
    truncated_labels: int
    resumed_from: int | None


def _resolve_samples(cfg: TrainConfig, run_dir: Path):
    if cfg.samples:
        return sample_files.load_samples(list(cfg.samples))
    if not cfg.task:
        raise ValueError(
            "no training data: set `samples` (fine-tune sample files) or `task` (to build them "
            "from the dataset's gold answers/rationales)"
        )
    path = run_dir / "samples" / f"gold_{cfg.task}_{cfg.method}.tfrecord"
    if jax.process_index() == 0:
        n = sample_files.write_gold_samples(cfg.task, cfg.method, path, cfg.split_name)
        print(f"built {n} {cfg.method} samples for {cfg.task} from the dataset -> {path}", flush=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gold samples written")
    return sample_files.load_samples([path])


def _eval_examples(cfg: TrainConfig, task: str):
    examples = load_task(task).split("test", cfg.split_name)
    return examples[: cfg.eval.limit] if cfg.eval.limit else examples


def _gather_params(params):
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def _predictions_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "predictions" / f"epoch_{epoch:03d}.jsonl"


def _export(cfg: TrainConfig, run_dir: Path, student, st, state, step: int, best, last, task: str) -> None:
    """The best epoch's student (the report's headline; the last step when nothing was evaluated or the best
    step was not kept) as an HF directory in run_dir/export, with its training format (trained.export_student).
    Every process takes part: the parameters are restored with the training shardings and gathered."""
    export, params = last or {"step": step}, state["params"]
    if best is not None and best["step"] != step:
        if best["step"] in saved_steps(run_dir / "checkpoints"):
            abstract = abstract_like(student.abstract_params, st.state_shardings["params"])
            export, params = best, restore_params(run_dir / "checkpoints" / str(best["step"]), abstract)
        elif jax.process_index() == 0:
            print(f"warning: the best epoch (step {best['step']}) was not kept; exporting step {step}", flush=True)
    host_params = _gather_params(params)
    if jax.process_index() == 0:
        model = nnx.merge(student.graphdef, host_params)
        fmt = training_format(
            cfg,
            task=task,
            model_kind=student.model_type,
            step=export["step"],
            evaluation=export if "accuracy" in export else None,
            selection="best" if export is best else "last",
        )
        export_student(LoadedStudent(model, student.tokenizer, str(run_dir), fmt), run_dir / "export")


def train(
    cfg: TrainConfig,
    *,
    model: nnx.Module | None = None,
    tokenizer=None,
    samples=None,
    eval_examples=None,
    require_checkpoint: bool = False,
    on_step: Callable | None = None,
) -> TrainResult:
    """Fine-tune a student; resumes automatically from the newest checkpoint in `cfg.run_dir`.

    Python-API extras: `model`/`tokenizer` objects instead of `cfg.student.model`, `samples` (FinetuneSample
    list) instead of files, `eval_examples` (objects with sample_index/question/answer) instead of the
    task's test split. `require_checkpoint` makes a missing checkpoint an error (NoCheckpointError).
    `on_step(step, metrics)` is called after each step's metrics are fetched.
    """
    maybe_initialize_distributed(cfg)
    if not cfg.run_dir:
        raise ValueError("run_dir is not set")
    run_dir = as_path(cfg.run_dir)
    check_reachable(run_dir)  # a bucket that cannot be reached: one line now, not after the first epoch
    is_main = jax.process_index() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # --- checks that need no data first: mesh vs devices, then the student
    mesh = make_mesh(cfg)
    student = build_student(cfg, model=model, tokenizer=tokenizer)

    # --- data
    samples = samples if samples is not None else _resolve_samples(cfg, run_dir)
    if not samples:
        raise ValueError("no fine-tune samples to train on")
    task = samples[0].task
    template = METHOD_TEMPLATE[samples[0].method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoded = encode_samples(samples, student.tokenizer, model_type=student.model_type, max_length=cfg.max_length)
    for w in caught:
        if is_main:
            print(f"warning: {w.message}", flush=True)
    pad_id = tokenizer_pad_id(student.tokenizer)
    start_id = getattr(student.config, "decoder_start_token_id", None)
    batcher = Batcher(
        encoded,
        cfg.batch_size,
        cfg.grad_accum,
        cfg.seed,
        cfg.bucket,
        pad_id,
        pad_id if start_id is None else start_id,
        jax.process_index(),
        jax.process_count(),
    )
    steps_per_epoch = batcher.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    # --- mesh, state, step
    st = setup(cfg, student=student, total_steps=total_steps, mesh=mesh)
    dp = st.mesh.shape["data"] * st.mesh.shape["fsdp"]
    if batcher.micro % dp:
        raise ValueError(
            f"micro-batch of {batcher.micro} rows (batch_size {cfg.batch_size} / grad_accum "
            f"{cfg.grad_accum}) is not divisible by the data-parallel mesh size {dp} "
            f"(data={st.mesh.shape['data']} x fsdp={st.mesh.shape['fsdp']})"
        )
    ckpt = Checkpoints(
        run_dir / "checkpoints", keep_last=cfg.keep_last, keep_best=cfg.keep_best, async_save=cfg.async_checkpointing
    )
    latest = ckpt.latest_step()
    history: list[dict] = []
    if latest is not None:
        state, pos = ckpt.restore(latest, st.abstract_state())
        epoch, index, history = pos["epoch"], pos["batch"], pos.get("history", [])
        if pos.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(
                f"checkpoint in {run_dir} was made with {pos['steps_per_epoch']} batches per epoch, "
                f"this config gives {steps_per_epoch}: resume needs the same data and batch size"
            )
        if is_main:
            print(f"resuming from step {latest} (epoch {epoch}, batch {index}) in {run_dir}", flush=True)
    else:
        if require_checkpoint:
            raise NoCheckpointError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from")
        state = st.init_state()
        epoch, index = 0, 0
    step = int(jax.device_get(state["step"]))
    if is_main:
        save_config(cfg, run_dir / "config.json")

    evals = eval_examples
    if cfg.eval.every_epochs and evals is None:
        evals = _eval_examples(cfg, task)

    peak, peak_src = peak_flops_per_device(dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32)
    peak_total = peak * st.mesh.size
    logger = MetricsLogger(run_dir, total_steps=total_steps, initial_step=step)
    logger.write(
        f"student {student.family.name} ({student.n_params / 1e6:.1f}M params), "
        f"{len(encoded)} samples, {steps_per_epoch} steps/epoch, {total_steps} steps, mesh "
        f"{dict(st.mesh.shape)}, peak {peak / 1e12:.3g} TFLOP/s/device ({peak_src})"
    )
    if encoded.truncated_prompts or encoded.truncated_labels:
        logger.log(
            step,
            {
                "truncated_prompts": encoded.truncated_prompts,
                "truncated_labels": encoded.truncated_labels,
                "samples": len(encoded),
            },
            kind="data",
        )

    losses: dict[int, float] = {}
    pending = None  # (step, metrics on device, tokens) of the last step: fetched after the next dispatch
    t_last = None

    def flush(p):
        nonlocal t_last
        s, m, ntok = p
        m = jax.device_get(m)  # waits for step s only; step s+1 is already queued
        now = time.perf_counter()
        losses[s] = float(m["loss"])
        if not math.isfinite(losses[s]):
            raise FloatingPointError(f"loss is {losses[s]} at step {s}")
        out = {k: float(v) for k, v in m.items()}
        if t_last is not None:  # the first step includes compilation: no throughput for it
            dt = now - t_last
            out["step_time"] = dt
            out["tokens_per_s"] = ntok / dt
            out["mfu"] = mfu(student.n_params, ntok / dt, peak_total)
        t_last = now
        if s % cfg.log_every_steps == 0 or s == total_steps:
            logger.log(s, out)
        logger.progress(s, loss=out["loss"], **({"tok/s": out["tokens_per_s"]} if "tokens_per_s" in out else {}))
        if on_step is not None:
            on_step(s, out)

    def position(e, i):
        return {"epoch": e, "batch": i, "step": step, "steps_per_epoch": steps_per_epoch, "history": history}

    resumed_from = latest
    last_saved = latest

    def save(metrics=None):
        nonlocal last_saved
        logger.flush()  # every step logged before this checkpoint is durable (run dirs on object stores)
        ckpt.save(step, state, position(epoch, index), metrics=metrics)
        last_saved = step

    try:
        while step < total_steps and epoch < cfg.epochs:
            local = batcher.batch(epoch, index)
            ntok = batcher.n_tokens(epoch, index)
            state, m = st.run_step(state, local)
            step += 1
            index += 1
            if pending is not None:
                flush(pending)
            pending = (step, m, ntok)
            epoch_end = index == steps_per_epoch
            if epoch_end:
                flush(pending)
                pending = None
                e_done = epoch
                epoch, index = epoch + 1, 0
                metrics = None
                if cfg.eval.every_epochs and (e_done + 1) % cfg.eval.every_epochs == 0 and evals:
                    summary, records = generate_and_score(
                        nnx.merge(student.graphdef, state["params"]),
                        student.tokenizer,
                        evals,
                        task=task,
                        template=template,
                        batch_size=cfg.eval.batch_size,
                        max_new_tokens=cfg.eval.max_new_tokens,
                        mesh=st.mesh,
                    )
                    summary = {"epoch": e_done, "step": step, **summary}
                    history.append(summary)
                    metrics = {"accuracy": float(summary["accuracy"])}
                    if is_main:
                        write_jsonl_atomic(_predictions_path(run_dir, e_done), records)
                    logger.log(step, {k: v for k, v in summary.items() if k not in ("epoch", "step")}, kind="eval")
                    logger.write(f"epoch {e_done}: accuracy {summary['accuracy']:.4f} (n={summary['n']})")
                    t_last = None  # evaluation time is not training throughput
                save(metrics)
            elif cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                save()
        if pending is not None:
            flush(pending)
            pending = None
        if last_saved != step:  # stopped by max_steps between saves
            save()
        ckpt.wait()
    finally:
        logger.close()
        ckpt.close()

    best = max(history, key=lambda h: h["accuracy"]) if history else None
    last = history[-1] if history else None
    result = TrainResult(
        run_dir, step, losses, history, best, last, encoded.truncated_prompts, encoded.truncated_labels, resumed_from
    )
    done = step >= total_steps or epoch >= cfg.epochs
    if done and cfg.export:
        _export(cfg, run_dir, student, st, state, step, best, last, task)
    if is_main:
        write_json_atomic(
            run_dir / "results.json",
            {
                "task": task,
                "method": cfg.method,
                "steps": step,
                "best_over_epochs": best,
                "last_epoch": last,
                "history": history,
                "truncated_prompts": encoded.truncated_prompts,
                "truncated_labels": encoded.truncated_labels,
                "samples": len(encoded),
                "config": to_dict(cfg),
            },
        )
    return result
