"""`ftcot run CONFIG`: teach -> curate -> train -> evaluate -> report as one resumable pipeline.

    from ftcot_jax.config import load_run_config
    from ftcot_jax.pipeline.run import run
    result = run(load_run_config("configs/quickstart.yaml", ["train.epochs=2"]))

Each stage is a function writing files under the run dir; `run()` calls the ones that are not current
(pipeline/stages.py decides) and ends with the report. A stage whose hash changed has its old outputs
removed first (a stale checkpoint must not be resumed). Training that was interrupted has no stage record
yet: the rerun calls the trainer again, which resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ftcot_jax import models
from ftcot_jax.config import RunConfig, TrainConfig, save_config
from ftcot_jax.evaluation import generate_and_score
from ftcot_jax.files import open_append, write_json_atomic
from ftcot_jax.models.api import count_params
from ftcot_jax.paths import as_path, check_reachable, replace_dir, rmtree
from ftcot_jax.pipeline.curate import METHOD_LABELS, Method, curate_cot, methods_of, vanilla
from ftcot_jax.pipeline.plan import cache_root, teach_items
from ftcot_jax.pipeline.report import write_report
from ftcot_jax.pipeline.stages import StageState, config_hash, section_dict, teacher_hash, train_hash
from ftcot_jax.prompts import METHOD_TEMPLATE
from ftcot_jax.samples import write_samples
from ftcot_jax.tasks import load_task
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.stage import teach_stage
from ftcot_jax.train.loop import train
from ftcot_jax.train.student import build_student
from ftcot_jax.trained import FORMAT_FILE, export_student
from ftcot_jax.trained import load_student as load_trained

# ----------------------------------------------------------------------------- teach and curate


def teach(cfg: RunConfig, task: str, kind: str, log) -> Path:
    """Greedy teacher (kind ft_cot) on teacher.split, or D samples at diverse_temperature on the train questions
    curation uses (pipeline.plan.teach_items), through the teacher's one entry for the stage."""
    t = cfg.teacher
    if kind == "diverse":
        temperature, samples = t.diverse_temperature, max(cfg.curate.diverse_samples)
    else:
        temperature, samples = t.temperature, 1
    items = [] if t.import_from else teach_items(cfg, task, "diverse" if kind == "diverse" else "greedy")
    n_test = sum(it.split == "test" for it in items)
    if n_test:
        log(
            f"  teach {task}: {n_test} of {len(items)} questions are test questions (teacher.split={t.split}): "
            "asked only for the teacher's own test accuracy"
        )
    return teach_stage(t, task, items, cache_root(cfg), temperature=temperature, samples=samples, log=log)


def curate(cfg: RunConfig, task: str, method: Method, out: Path, log) -> Path:
    """The method's sample file (only the first curate.max_train_questions train questions when set)."""
    if method.kind == "ft":
        cur = vanilla(task, cfg.split_name)
    else:
        temperature = cfg.teacher.diverse_temperature if method.kind == "diverse" else cfg.teacher.temperature
        cache = TeacherCache(cache_root(cfg), task=task, teacher_model=cfg.teacher.model, temperature=temperature)
        indices = list(range(method.samples)) if method.kind == "diverse" else [0]
        cur = curate_cot(cache, completion_indices=indices, split_name=cfg.split_name, method=method.kind)
        # step_by_step: the same kept questions as ft_cot (the curation is the same), learnt as two tasks
    samples = cur.samples
    n = cfg.curate.max_train_questions
    if n:
        keep = set(load_task(task).split_indices("train", cfg.split_name)[:n])
        samples = [s for s in samples if s.sample_index in keep]
    if not samples:
        raise ValueError(f"{task} {method.key}: no sample survived curation ({cur.summary()})")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    write_samples(out, samples)
    sub = f" (first {n} train questions: {len(samples)} samples)" if n else ""
    log(f"  curate {cur.summary(out)}{sub}")
    return out


# ----------------------------------------------------------------------------- the student


def needs_conversion(cfg: RunConfig) -> bool:
    """GGUF students are dequantised once into an HF dir (loading that takes seconds, a GGUF a minute)."""
    s = cfg.student
    return not s.from_scratch and (s.model == "smollm2-135m-instruct" or s.model.endswith(".gguf"))


def student_path(cfg: RunConfig) -> str:
    return str(as_path(cfg.run_dir) / "student") if needs_conversion(cfg) else cfg.student.model


def prepare_student(cfg: RunConfig, out: Path, log) -> Path:
    t0 = time.time()
    model, tok = models.load(cfg.student.model)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        rmtree(tmp)
    models.save_hf(model, tok, tmp)
    replace_dir(tmp, out)
    log(f"  student {cfg.student.model} -> {out} (HF format, {time.time() - t0:.0f}s)")
    return out / "config.json"


def train_config(cfg: RunConfig, task: str, method: Method, samples_path: Path) -> TrainConfig:
    """The trainer's config of one (task, method): the train section plus what the pipeline fills in."""
    return dataclasses.replace(
        cfg.train,
        run_dir=str(as_path(cfg.run_dir) / "train" / task / method.key),
        student=dataclasses.replace(cfg.student, model=student_path(cfg)),
        eval=cfg.eval,
        task=task,
        method=method.train_method,
        samples=(str(samples_path),),
        split_name=cfg.split_name,
        export=False,  # the pipeline's own export stage (`export_trained`) does it, once training has finished
    )


def load_student(cfg: RunConfig):
    """(model, tokenizer) of the student before fine-tuning, in fp32: the loaded weights (models.load), or the
    trainer's random init of a from-scratch student (same seed, so the same weights as training starts from)."""
    s = cfg.student
    if not s.from_scratch:
        return models.load(student_path(cfg))
    student = build_student(TrainConfig(student=dataclasses.replace(s, precision="fp32"), seed=cfg.train.seed))
    return student.make_model(), student.tokenizer


# ----------------------------------------------------------------------------- evaluation results


def zero_shot(cfg: RunConfig, task: str, student, out: Path, log) -> Path:
    """The un-fine-tuned student on the test split with the reference zero-shot prompt (template zs)."""
    model, tok = student
    examples = load_task(task).split("test", cfg.split_name)
    if cfg.eval.limit:
        examples = examples[: cfg.eval.limit]
    t0 = time.time()
    summary, records = generate_and_score(
        model,
        tok,
        examples,
        task=task,
        template="zs",
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.zero_shot_max_new_tokens,
        stop=list(cfg.eval.zero_shot_stop) or None,
    )
    result = {
        "task": task,
        "method": "zero_shot",
        "kind": "zero_shot",
        "label": METHOD_LABELS["zero_shot"],
        "template": "zs",
        "params": count_params(model),
        "best_over_epochs": {"epoch": None, **summary},
        "last_epoch": {"epoch": None, **summary},
        "history": [],
        "samples": 0,
        "records": records,
    }
    write_json_atomic(out, result)
    log(f"  zero-shot {task}: accuracy {100 * summary['accuracy']:.2f}% (n={summary['n']}, {time.time() - t0:.0f}s)")
    return out


def export_trained(train_dir: Path, log) -> Path:
    """The best epoch's student (`trained.load_student`'s "best") as an HF directory in train_dir/export."""
    t0 = time.time()
    student = load_trained(train_dir, step="best")
    out = export_student(student, train_dir / "export")
    log(f"  exported step {student.trained.step} ({student.trained.selection}) -> {out} ({time.time() - t0:.0f}s)")
    return out / FORMAT_FILE


def collect(cfg: RunConfig, task: str, method: Method, train_dir: Path, out: Path) -> Path:
    """eval/<task>/<key>.json from the trainer's results.json (per-epoch test accuracy)."""
    res = json.loads((train_dir / "results.json").read_text())
    result = {
        "task": task,
        "method": method.key,
        "label": method.label,
        "kind": method.kind,
        "diverse_samples": method.samples if method.kind == "diverse" else None,
        "template": METHOD_TEMPLATE[method.train_method],
        "best_over_epochs": res.get("best_over_epochs"),
        "last_epoch": res.get("last_epoch"),
        "history": res.get("history", []),
        "samples": res.get("samples"),
        "steps": res.get("steps"),
        "truncated_prompts": res.get("truncated_prompts"),
        "truncated_labels": res.get("truncated_labels"),
        "train_dir": str(train_dir.relative_to(cfg.run_dir)),
        "params": _export_params(train_dir / "export"),
        "export": _export_card(train_dir / "export"),
    }
    write_json_atomic(out, result)
    return out


def _export_card(export_dir: Path) -> dict | None:
    """The exported student's directory (relative to the train dir) and training format, if it was exported."""
    card = export_dir / FORMAT_FILE
    return {"dir": export_dir.name, **json.loads(card.read_text())} if card.is_file() else None


def _export_params(export_dir: Path) -> int | None:
    """Parameter count from the exported safetensors header (tied weights are stored once)."""
    total = 0
    files = sorted(export_dir.glob("*.safetensors")) if export_dir.is_dir() else []
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


# ----------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    events: list[tuple[str, str]]  # (stage id, ran | skipped), in order
    report_path: Path | None
    table: str
    seconds: float


def run(cfg: RunConfig, *, log: Callable[[str], None] | None = None, train_hook: Callable | None = None) -> RunResult:
    """Run every stage that is not current. `train_hook(step, metrics)` is passed to the trainer's
    on_step (tests use it to interrupt training)."""
    t_start = time.time()
    run_dir = as_path(cfg.run_dir)
    for url in (run_dir, cache_root(cfg)):  # a bucket that cannot be reached: one line before any work
        check_reachable(url)
    run_dir.mkdir(parents=True, exist_ok=True)
    logfile = open_append(run_dir / "pipeline.log")

    def _log(msg: str):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        logfile.write(line + "\n")
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    try:
        save_config(cfg, run_dir / "config.json")
        state = StageState(run_dir, _log)
        methods = methods_of(cfg)
        _log(
            f"run {run_dir}: tasks {', '.join(cfg.tasks)}; methods {', '.join(m.key for m in methods)}; "
            f"student {cfg.student.display_name}; teacher {cfg.teacher.model}"
        )
        student_h = config_hash(section_dict(cfg.student), cfg.train.seed)
        if needs_conversion(cfg):
            out = run_dir / "student"
            state.run(
                "prepare/student",
                config_hash("student", section_dict(cfg.student)),
                lambda: [prepare_student(cfg, out, _log)],
                clean=[out],
            )
        for task in cfg.tasks:
            # --- teach (once per teacher kind the methods need)
            teach_h = {}
            for kind in sorted({m.teacher_kind for m in methods if m.teacher_kind}):
                h = teacher_hash(cfg, task, kind)
                sid = f"teach/{task}/{'greedy' if kind == 'ft_cot' else 'diverse'}"
                state.run(sid, h, lambda task=task, kind=kind: [teach(cfg, task, kind, _log)])
                teach_h[kind] = h
            # --- curate
            curate_h = {}
            for m in methods:
                path = run_dir / "samples" / f"{task}__{m.key}.tfrecord"
                h = config_hash(
                    "curate",
                    task,
                    cfg.split_name,
                    m.key,
                    m.kind,
                    m.samples,
                    cfg.curate.max_train_questions,
                    teach_h.get(m.teacher_kind, ""),
                )
                state.run(
                    f"curate/{task}/{m.key}",
                    h,
                    lambda task=task, m=m, path=path: [curate(cfg, task, m, path, _log)],
                    clean=[path],
                )
                curate_h[m.key] = h
            # --- evaluate the student before fine-tuning
            if cfg.eval.zero_shot:
                out = run_dir / "eval" / task / "zero_shot.json"
                h = config_hash(
                    "zero_shot",
                    task,
                    cfg.split_name,
                    student_h,
                    cfg.eval.limit,
                    cfg.eval.batch_size,
                    cfg.eval.zero_shot_max_new_tokens,
                    list(cfg.eval.zero_shot_stop),
                )
                state.run(
                    f"evaluate/{task}/zero_shot",
                    h,
                    lambda task=task, out=out: [zero_shot(cfg, task, load_student(cfg), out, _log)],
                    clean=[out],
                )
            # --- train (resumable) + collect its per-epoch evaluation
            for m in methods:
                tcfg = train_config(cfg, task, m, run_dir / "samples" / f"{task}__{m.key}.tfrecord")
                train_dir = as_path(tcfg.run_dir)
                h = train_hash(cfg, tcfg, curate_h[m.key])
                sid = f"train/{task}/{m.key}"

                def do_train(tcfg=tcfg, train_dir=train_dir):
                    res = train(tcfg, on_step=train_hook)
                    if res.resumed_from is not None:
                        _log(f"  resumed {train_dir} from step {res.resumed_from}")
                    return [train_dir / "results.json"]

                state.run(sid, h, do_train, clean=[train_dir])
                if cfg.train.export:
                    state.run(
                        f"export/{task}/{m.key}",
                        config_hash("export", h),
                        lambda train_dir=train_dir: [export_trained(train_dir, _log)],
                        clean=[train_dir / "export"],
                    )
                out = run_dir / "eval" / task / f"{m.key}.json"
                state.run(
                    f"evaluate/{task}/{m.key}",
                    config_hash("collect", h, cfg.train.export),
                    lambda task=task, m=m, train_dir=train_dir, out=out: [collect(cfg, task, m, train_dir, out)],
                    clean=[out],
                )
        # --- report (cheap: always rewritten from the eval files)
        rep = write_report([run_dir], run_dir, paper=cfg.report.paper, plots=cfg.report.plots)
        state.events.append(("report", "ran"))
        _log(f"[report] {rep.path}")
        dt = time.time() - t_start
        _log(f"pipeline finished in {dt:.0f}s")
        return RunResult(run_dir, state.events, rep.path, rep.table, dt)
    finally:
        logfile.close()
