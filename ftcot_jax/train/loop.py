"""The training run: a `Trainer` fine-tunes a student and resumes from the newest checkpoint of its run dir.

    from ftcot_jax.config import load_config
    from ftcot_jax.train.loop import train
    result = train(load_config("run.yaml", ["optim.lr=1e-4"]))

`train(cfg)` = `Trainer.create(cfg)` (distributed start-up and mesh -> student -> samples tokenised once and
batched per host (train.batches) -> `TrainSetup` (train.step)), then `restore_or_init` (the newest checkpoint,
or a fresh `TrainState`), then `fit`: steps whose metrics are fetched one step late (so the host never waits on
the device), and at each epoch end `evaluate` (greedy, and self-consistency with `eval.samples` > 1, on the test
split: evaluation.evaluate) and
`save` (async, atomic, exact resume); finally `results.json`. Exporting the best epoch is the caller's
(`on_finished`; `trained.train_and_export` does it when `cfg.export` is on).
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

from ftcot_jax import evaluation
from ftcot_jax import samples as sample_files
from ftcot_jax.config import TrainConfig, save_config, to_dict
from ftcot_jax.files import write_json_atomic, write_jsonl_atomic
from ftcot_jax.models.api import tokenizer_pad_id
from ftcot_jax.paths import as_path, check_reachable
from ftcot_jax.prompts import METHOD_TEMPLATE
from ftcot_jax.tasks import load_task
from ftcot_jax.train.batches import Batcher, Encoded, encode_samples
from ftcot_jax.train.checkpoint import Checkpoints, NoCheckpointError
from ftcot_jax.train.mesh import make_mesh, maybe_initialize_distributed
from ftcot_jax.train.metrics import MetricsLogger, mfu, peak_flops_per_device
from ftcot_jax.train.state import TrainState
from ftcot_jax.train.step import TrainSetup, setup
from ftcot_jax.train.student import build_student


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
    finished: bool = True  # every configured step ran (False: stopped early, e.g. a killed run's caller)


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


def _encode(cfg: TrainConfig, samples, tokenizer, model_type, is_main: bool) -> Encoded:
    """Samples -> token ids, printing (on the main process) what the encoder warned about (truncation)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoded = encode_samples(
            samples, tokenizer, model_type=model_type, max_length=cfg.max_length, label_weight=cfg.label_weight
        )
    for w in caught:
        if is_main:
            print(f"warning: {w.message}", flush=True)
    return encoded


def predictions_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "predictions" / f"epoch_{epoch:03d}.jsonl"


def votes_path(run_dir: Path, epoch: int) -> Path:
    """The self-consistency votes beside an epoch's predictions (one line per question)."""
    return run_dir / "predictions" / f"epoch_{epoch:03d}.samples.jsonl"


class _LateMetrics:
    """A step's metrics fetched after the next step is dispatched (the host never waits on the device); turns
    them into floats, step time, tokens/s and MFU, and hands them to the logger and `on_step`."""

    def __init__(self, logger: MetricsLogger, n_params: int, peak_total: float, log_every: int, total_steps: int):
        self.logger, self.n_params, self.peak_total = logger, n_params, peak_total
        self.log_every, self.total_steps = log_every, total_steps
        self.pending = None  # (step, metrics on device, tokens)
        self.t_last: float | None = None
        self.losses: dict[int, float] = {}
        self.on_step: Callable | None = None

    def push(self, step: int, metrics, n_tokens: int) -> None:
        self.flush()
        self.pending = (step, metrics, n_tokens)

    def restart_clock(self) -> None:
        """The next step's time includes something that is not training (evaluation): no throughput for it."""
        self.t_last = None

    def flush(self) -> None:
        if self.pending is None:
            return
        s, m, ntok = self.pending
        self.pending = None
        m = jax.device_get(m)  # waits for step s only; step s+1 is already queued
        now = time.perf_counter()
        self.losses[s] = float(m["loss"])
        if not math.isfinite(self.losses[s]):
            raise FloatingPointError(f"loss is {self.losses[s]} at step {s}")
        out = {k: float(v) for k, v in m.items()}
        if self.t_last is not None:  # the first step includes compilation: no throughput for it
            dt = now - self.t_last
            out.update(step_time=dt, tokens_per_s=ntok / dt, mfu=mfu(self.n_params, ntok / dt, self.peak_total))
        self.t_last = now
        if s % self.log_every == 0 or s == self.total_steps:
            self.logger.log(s, out)
        self.logger.progress(s, loss=out["loss"], **({"tok/s": out["tokens_per_s"]} if "tokens_per_s" in out else {}))
        if self.on_step is not None:
            self.on_step(s, out)


@dataclasses.dataclass
class Trainer:
    """One training run of one student (`Trainer.create`): its data, step, checkpoints and logs, and where
    it is (`state`, `epoch`, `index` = the next batch of the epoch, `history` of evaluations)."""

    cfg: TrainConfig
    run_dir: Path
    setup: TrainSetup
    batcher: Batcher
    encoded: Encoded
    task: str
    evals: list | None
    ckpt: Checkpoints
    logger: MetricsLogger
    metrics: _LateMetrics
    total_steps: int
    state: TrainState | None = None
    step: int = 0
    epoch: int = 0
    index: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    resumed_from: int | None = None
    last_saved: int | None = None

    @property
    def student(self):
        return self.setup.student

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def steps_per_epoch(self) -> int:
        return self.batcher.steps_per_epoch

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps or self.epoch >= self.cfg.epochs

    # ------------------------------------------------------------------------- building

    @classmethod
    def create(cls, cfg: TrainConfig, *, model=None, tokenizer=None, samples=None, eval_examples=None) -> Trainer:
        """Checks that need no data first (mesh vs devices, the student), then the data, the step and the logs."""
        maybe_initialize_distributed(cfg)
        if not cfg.run_dir:
            raise ValueError("run_dir is not set")
        run_dir = as_path(cfg.run_dir)
        check_reachable(run_dir)  # a bucket that cannot be reached: one line now, not after the first epoch
        is_main = jax.process_index() == 0
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        mesh = make_mesh(cfg)
        student = build_student(cfg, model=model, tokenizer=tokenizer)
        samples = samples if samples is not None else _resolve_samples(cfg, run_dir)
        if not samples:
            raise ValueError("no fine-tune samples to train on")
        encoded = _encode(cfg, samples, student.tokenizer, student.model_type, is_main)
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
        total_steps = cfg.epochs * batcher.steps_per_epoch
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        st = setup(cfg, student=student, total_steps=total_steps, mesh=mesh)
        task = samples[0].task
        evals = eval_examples
        if cfg.eval.every_epochs and evals is None:
            evals = _eval_examples(cfg, task)
        ckpt = Checkpoints(
            run_dir / "checkpoints",
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best,
            async_save=cfg.async_checkpointing,
        )
        peak, peak_src = peak_flops_per_device(dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32)
        logger = MetricsLogger(run_dir, total_steps=total_steps, initial_step=ckpt.latest_step() or 0)
        logger.write(
            f"student {student.family.name} ({student.n_params / 1e6:.1f}M params), "
            f"{len(encoded)} samples, {batcher.steps_per_epoch} steps/epoch, {total_steps} steps, mesh "
            f"{dict(st.mesh.shape)}, peak {peak / 1e12:.3g} TFLOP/s/device ({peak_src})"
        )
        if encoded.truncated_prompts or encoded.truncated_labels:
            counts = {"truncated_prompts": encoded.truncated_prompts, "truncated_labels": encoded.truncated_labels}
            logger.log(ckpt.latest_step() or 0, {**counts, "samples": len(encoded)}, kind="data")
        late = _LateMetrics(logger, student.n_params, peak * st.mesh.size, cfg.log_every_steps, total_steps)
        return cls(cfg, run_dir, st, batcher, encoded, task, evals, ckpt, logger, late, total_steps)

    # ------------------------------------------------------------------------- the run's parts

    def restore_or_init(self, *, require_checkpoint: bool = False) -> None:
        """The newest checkpoint's state and data position, or a fresh state (`require_checkpoint`: an error)."""
        latest = self.ckpt.latest_step()
        if latest is not None:
            tree, pos = self.ckpt.restore(latest, self.setup.abstract_state().to_tree())
            if pos.get("steps_per_epoch") not in (None, self.steps_per_epoch):
                raise ValueError(
                    f"checkpoint in {self.run_dir} was made with {pos['steps_per_epoch']} batches per epoch, "
                    f"this config gives {self.steps_per_epoch}: resume needs the same data and batch size"
                )
            self.state = TrainState.from_tree(tree)
            self.epoch, self.index, self.history = pos["epoch"], pos["batch"], pos.get("history", [])
            if self.is_main:
                print(
                    f"resuming from step {latest} (epoch {self.epoch}, batch {self.index}) in {self.run_dir}",
                    flush=True,
                )
        else:
            if require_checkpoint:
                raise NoCheckpointError(f"no checkpoint in {self.run_dir / 'checkpoints'} to resume from")
            self.state = self.setup.init_state()
        self.resumed_from = self.last_saved = latest
        self.step = int(jax.device_get(self.state.step))
        if self.is_main:
            save_config(self.cfg, self.run_dir / "config.json")

    def train_step(self) -> None:
        """One step on the next batch; its metrics are fetched after the next step is dispatched."""
        local = self.batcher.batch(self.epoch, self.index)
        n_tokens = self.batcher.n_tokens(self.epoch, self.index)
        self.state, m = self.setup.run_step(self.state, local)
        self.step += 1
        self.index += 1
        self.metrics.push(self.step, m, n_tokens)

    def evaluate(self, epoch: int) -> dict:
        """Greedy decoding of the evaluation questions with the current params (and, with `eval.samples` K > 1,
        K sampled completions each and their vote); the summary joins `history`, the per-question records go
        to predictions/epoch_NNN.jsonl, the votes to predictions/epoch_NNN.samples.jsonl."""
        ev = evaluation.evaluate(
            nnx.merge(self.student.graphdef, self.state.params),
            self.student.tokenizer,
            self.evals,
            task=self.task,
            template=METHOD_TEMPLATE[self.cfg.method],
            eval_cfg=self.cfg.eval,
            epoch=epoch,
            mesh=self.setup.mesh,
        )
        summary = {"epoch": epoch, "step": self.step, **ev.summary}
        self.history.append(summary)
        if self.is_main:
            write_jsonl_atomic(predictions_path(self.run_dir, epoch), ev.records)
            if ev.votes is not None:
                write_jsonl_atomic(votes_path(self.run_dir, epoch), ev.votes)
        scalars = {k: v for k, v in summary.items() if k not in ("epoch", "step") and not isinstance(v, dict)}
        self.logger.log(self.step, {**scalars, **ev.seconds}, kind="eval")
        line = f"epoch {epoch}: accuracy {summary['accuracy']:.4f} (n={summary['n']})"
        if ev.votes is not None:
            k = summary["samples"]
            line += f", maj@{k} {summary['maj_accuracy']:.4f}, pass@{k} {summary['pass_accuracy']:.4f}"
        self.logger.write(line)
        self.metrics.restart_clock()  # evaluation time is not training throughput
        return summary

    def save(self, metrics: dict | None = None) -> None:
        """An async checkpoint of the state and the data position (where the next step starts)."""
        self.logger.flush()  # every step logged before this checkpoint is durable (run dirs on object stores)
        position = {
            "epoch": self.epoch,
            "batch": self.index,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "history": self.history,
        }
        self.ckpt.save(self.step, self.state.to_tree(), position, metrics=metrics)
        self.last_saved = self.step

    def end_epoch(self) -> None:
        """The epoch's last metrics, its evaluation when one is due, and its checkpoint."""
        self.metrics.flush()
        done, self.epoch, self.index = self.epoch, self.epoch + 1, 0
        every = self.cfg.eval.every_epochs
        metrics = None
        if every and (done + 1) % every == 0 and self.evals:
            metrics = {"accuracy": float(self.evaluate(done)["accuracy"])}
        self.save(metrics)

    # ------------------------------------------------------------------------- the loop

    def fit(self, on_step: Callable | None = None) -> TrainResult:
        """Steps until the configured epochs (or max_steps) are done; `on_step(step, metrics)` after each
        step's metrics are fetched."""
        self.metrics.on_step = on_step
        every = self.cfg.checkpoint_every_steps
        try:
            while not self.finished:
                self.train_step()
                if self.index == self.steps_per_epoch:
                    self.end_epoch()
                elif every and self.step % every == 0:
                    self.save()
            self.metrics.flush()
            if self.last_saved != self.step:  # stopped by max_steps between saves
                self.save()
            self.ckpt.wait()
        finally:
            self.logger.close()
            self.ckpt.close()
        return self.result()

    def result(self) -> TrainResult:
        best = max(self.history, key=lambda h: h["accuracy"]) if self.history else None
        last = self.history[-1] if self.history else None
        e = self.encoded
        return TrainResult(
            self.run_dir,
            self.step,
            self.metrics.losses,
            self.history,
            best,
            last,
            e.truncated_prompts,
            e.truncated_labels,
            self.resumed_from,
            self.finished,
        )

    def write_results(self, result: TrainResult) -> None:
        if self.is_main:
            write_json_atomic(
                self.run_dir / "results.json",
                {
                    "task": self.task,
                    "method": self.cfg.method,
                    "steps": result.steps,
                    "best_over_epochs": result.best,
                    "last_epoch": result.last,
                    "history": result.history,
                    "truncated_prompts": result.truncated_prompts,
                    "truncated_labels": result.truncated_labels,
                    "samples": len(self.encoded),
                    "config": to_dict(self.cfg),
                },
            )


def train(
    cfg: TrainConfig,
    *,
    model: nnx.Module | None = None,
    tokenizer=None,
    samples=None,
    eval_examples=None,
    require_checkpoint: bool = False,
    on_step: Callable | None = None,
    on_finished: Callable[[Trainer, TrainResult], None] | None = None,
) -> TrainResult:
    """Fine-tune a student; resumes automatically from the newest checkpoint in `cfg.run_dir`.

    Python-API extras: `model`/`tokenizer` objects instead of `cfg.student.model`, `samples` (FinetuneSample
    list) instead of files, `eval_examples` (objects with sample_index/question/answer) instead of the
    task's test split. `require_checkpoint` makes a missing checkpoint an error (NoCheckpointError).
    `on_step(step, metrics)` is called after each step's metrics are fetched; `on_finished(trainer, result)`
    on every process once every step has run, before results.json is written (the export's place).
    """
    trainer = Trainer.create(cfg, model=model, tokenizer=tokenizer, samples=samples, eval_examples=eval_examples)
    trainer.restore_or_init(require_checkpoint=require_checkpoint)
    result = trainer.fit(on_step)
    if result.finished and on_finished is not None:
        on_finished(trainer, result)
    trainer.write_results(result)
    return result
