"""`ftcot run CONFIG`: teach -> curate -> train -> evaluate -> report as one resumable pipeline.

    from ftcot_jax.pipeline import load_run_config, run
    cfg = load_run_config("configs/quickstart.yaml", ["train.epochs=2"])
    result = run(cfg)

One schema: `RunConfig` composes the trainer's `TrainConfig` (section `train`) with the other stages'
sections and is loaded by the same strict loader (ftcot_jax.config.from_dict: unknown keys are errors
naming the key, values are type-checked, `a.b=value` overrides).

Run directory layout (every path relative to `run_dir`):

    config.json                      the resolved RunConfig of the last invocation
    stages.json                      per stage: hash of the config that produced it, upstream hashes, outputs
    pipeline.log                     one line per stage: ran / skipped, seconds
    teacher_cache/                   teacher answers (unless teacher.cache_dir points elsewhere)
    samples/<task>__<key>.tfrecord   curated fine-tune samples
    train/<task>/<key>/              the trainer's run dir (checkpoints, metrics.jsonl, predictions, results.json)
    eval/<task>/<key>.json           test results per method (zero_shot, ft, ft_cot, ft_cot_t70_8aug, ...)
    report.md, plots/*.png           `ftcot report` output

A stage is skipped when its record in stages.json carries the same hash and its outputs exist. The
hash covers the part of the configuration the stage reads plus the hashes of the stages it reads from,
so changing a train key reruns train, evaluate and report but not teach or curate. A stage whose hash
changed has its old outputs removed first (a stale checkpoint must not be resumed). Training that was
interrupted has no stage record yet: the rerun calls the trainer again, which resumes from its newest
checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from ftcot_jax import config as config_lib
from ftcot_jax.config import TrainConfig

# Train fields the pipeline fills in itself (from `student`, `eval`, the curated samples).
PIPELINE_TRAIN_FIELDS = {
    "run_dir": "run_dir", "model": "student.model", "tokenizer": "student.tokenizer",
    "from_scratch": "student.from_scratch", "model_config": "student.model_config",
    "precision": "student.precision", "task": "tasks", "method": "curate.methods", "samples": "curate.methods",
    "split_name": "split_name", "eval_limit": "eval.limit", "eval_batch_size": "eval.batch_size",
    "eval_max_new_tokens": "eval.max_new_tokens", "eval_every_epochs": "eval.every_epochs",
}
# Train fields that change how a run is carried out, not what it computes (left out of the train hash).
NON_SEMANTIC_TRAIN_FIELDS = ("run_dir", "log_every_steps", "async_checkpointing", "keep_last", "keep_best",
                             "checkpoint_every_steps", "distributed", "export")

CURATE_METHODS = ("ft", "ft_cot", "diverse")
METHOD_LABELS = {"zero_shot": "Zero-shot", "ft": "Fine-tune", "ft_cot": "Fine-tune-CoT"}


def _choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class TeacherSection:
    """Who writes the rationales. `reference` is a program (offline), anything else a model name on an
    OpenAI-compatible server (endpoint = base URL ending in /v1; the key comes from `api_key_env`)."""

    model: str = "reference"
    protocol: str = "completions"    # completions | chat
    endpoint: str = ""               # "" = $OPENAI_BASE_URL
    api_key_env: str = ""            # "" = OPENAI_API_KEY
    temperature: float = 0.0         # Fine-tune-CoT teacher: greedy (reference)
    diverse_temperature: float = 0.7 # diverse reasoning teacher (reference: T=0.7, D samples)
    split: str = "all"               # questions the greedy teacher answers: train | test | all (paper: all)
    max_tokens: int = 128
    stop: tuple[str, ...] = ("END",)
    concurrency: int = 8
    timeout: float = 60.0
    max_attempts: int = 8
    seed: int = -1                   # -1 = no request seed
    cache_dir: str = ""              # "" = <run_dir>/teacher_cache; share one between runs to teach once

    def __post_init__(self):
        if not self.model:
            raise ValueError("teacher.model is empty; expected 'reference' or a model name on the server")
        _choice("teacher.protocol", self.protocol, ("completions", "chat"))
        _choice("teacher.split", self.split, ("train", "test", "all"))
        if self.temperature < 0 or self.diverse_temperature < 0:
            raise ValueError("teacher temperatures must be >= 0")
        if self.max_tokens < 1 or self.concurrency < 1 or self.max_attempts < 1 or self.timeout <= 0:
            raise ValueError("teacher.max_tokens, concurrency, max_attempts must be >= 1 and timeout > 0")


@dataclasses.dataclass(frozen=True)
class CurateSection:
    methods: tuple[str, ...] = ("ft", "ft_cot")   # ft (gold answers) | ft_cot (greedy teacher) | diverse
    diverse_samples: tuple[int, ...] = ()          # D values for `diverse` (paper: 64 MultiArith/SVAMP, 8 else)
    max_train_questions: int = 0                   # 0 = whole train split; N = its first N questions (all methods)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("curate.methods is empty; expected some of: " + ", ".join(CURATE_METHODS))
        for m in self.methods:
            _choice("curate.methods[]", m, CURATE_METHODS)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"curate.methods lists a method twice: {list(self.methods)}")
        if "diverse" in self.methods and not self.diverse_samples:
            raise ValueError("curate.methods has 'diverse' but curate.diverse_samples is empty (e.g. [8])")
        if any(d < 1 for d in self.diverse_samples) or len(set(self.diverse_samples)) != len(self.diverse_samples):
            raise ValueError(f"curate.diverse_samples must be distinct integers >= 1, got {list(self.diverse_samples)}")
        if self.max_train_questions < 0:
            raise ValueError(f"curate.max_train_questions must be >= 0, got {self.max_train_questions}")


@dataclasses.dataclass(frozen=True)
class StudentSection:
    """The student: an HF dir / hub id / "smollm2-135m-instruct" / .gguf (ftcot_jax.models.load), or with
    `from_scratch` a random init of `model_config` (HF config dict) with the tokenizer dir `tokenizer`."""

    model: str = ""
    tokenizer: str = ""
    from_scratch: bool = False
    model_config: dict | None = None
    precision: str = "fp32"          # fp32 | bf16 (compute dtype; params and optimizer stay fp32)
    name: str = ""                   # shown in reports; "" = derived from model

    def __post_init__(self):
        if not self.model and not (self.from_scratch and self.model_config):
            raise ValueError("student.model is empty; expected an HF dir, hub id, smollm2-135m-instruct or .gguf "
                             "(or student.from_scratch with student.model_config)")
        _choice("student.precision", self.precision, ("fp32", "bf16"))

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.model:
            return Path(self.model.rstrip("/")).name
        return f"{(self.model_config or {}).get('model_type', 'model')}-from-scratch"


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Test-split evaluation: per epoch inside training (greedy), and the zero-shot baseline."""

    limit: int = 0                   # 0 = whole test split; N = its first N questions
    batch_size: int = 32
    max_new_tokens: int = 256        # fine-tuned students (rationale + answer)
    every_epochs: int = 1
    zero_shot: bool = True           # evaluate the student before fine-tuning ("Q: {q}\n\nA:")
    zero_shot_max_new_tokens: int = 64
    zero_shot_stop: tuple[str, ...] = ()   # reference: none (the whole completion is parsed)

    def __post_init__(self):
        if self.limit < 0 or self.every_epochs < 0:
            raise ValueError("eval.limit and eval.every_epochs must be >= 0")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.zero_shot_max_new_tokens < 1:
            raise ValueError("eval.batch_size, max_new_tokens, zero_shot_max_new_tokens must be >= 1")


@dataclasses.dataclass(frozen=True)
class ReportSection:
    paper: bool = True               # put the paper's numbers for the same student beside ours
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run_dir: str = ""
    tasks: tuple[str, ...] = ()
    split_name: str = "default"
    teacher: TeacherSection = TeacherSection()
    curate: CurateSection = CurateSection()
    student: StudentSection | None = None
    train: TrainConfig = TrainConfig()
    eval: EvalSection = EvalSection()
    report: ReportSection = ReportSection()

    def __post_init__(self):
        from ftcot_jax.tasks import TASK_NAMES

        if not self.run_dir:
            raise ValueError("run_dir is empty; set it in the config or as run_dir=PATH")
        if not self.tasks:
            raise ValueError("tasks is empty; expected a list of task names, e.g. [last_letter_concatenation]")
        for t in self.tasks:
            if t not in TASK_NAMES:
                raise ValueError(f"unknown task '{t}' in tasks; expected one of: {', '.join(TASK_NAMES)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks lists a task twice: {list(self.tasks)}")
        if self.student is None:
            raise ValueError("the config has no student section; expected student.model")
        default = TrainConfig()
        for name, where in PIPELINE_TRAIN_FIELDS.items():
            if getattr(self.train, name) != getattr(default, name):
                raise ValueError(f"train.{name} is set by the pipeline; set {where} instead")
        if "ft_cot" in self.curate.methods or "diverse" in self.curate.methods:
            if self.teacher.model == "reference":
                from ftcot_jax.teacher.reference import check_supported

                for t in self.tasks:
                    check_supported(t)


def load_run_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                    base: dict | None = None) -> RunConfig:
    """YAML/JSON file + `a.b=value` overrides -> validated RunConfig (errors name the key)."""
    return config_lib.load_config(path, list(overrides), cls=RunConfig, base=base)


# ----------------------------------------------------------------------------- methods and hashes


@dataclasses.dataclass(frozen=True)
class Method:
    key: str          # file/dir name and report column: ft | ft_cot | ft_cot_t70_8aug
    kind: str         # ft | ft_cot | diverse
    samples: int = 1  # D for diverse

    @property
    def train_method(self) -> str:
        return "ft" if self.kind == "ft" else "ft_cot"

    @property
    def label(self) -> str:
        if self.kind == "diverse":
            return f"Diverse reasoning D={self.samples}"
        return METHOD_LABELS[self.kind]


def methods_of(cfg: RunConfig) -> list[Method]:
    from ftcot_jax.curate import train_key

    out = []
    for m in cfg.curate.methods:
        if m == "diverse":
            for d in cfg.curate.diverse_samples:
                out.append(Method(train_key("diverse", d, cfg.teacher.diverse_temperature), "diverse", d))
        else:
            out.append(Method(m, m))
    return out


def config_hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _section(obj) -> dict:
    return config_lib.to_dict(obj) if obj is not None else {}


def teacher_hash(cfg: RunConfig, task: str, kind: str) -> str:
    t = _section(cfg.teacher)
    for k in ("concurrency", "timeout", "max_attempts", "cache_dir"):
        t.pop(k)  # how to ask, not what is asked
    d = max(cfg.curate.diverse_samples) if kind == "diverse" else 1
    return config_hash("teach", task, cfg.split_name, kind, d, t)


def train_hash(cfg: RunConfig, train_cfg: TrainConfig, curate_h: str) -> str:
    """Covers the resolved TrainConfig (minus how-to-run keys), the student section and the samples' curation."""
    d = config_lib.to_dict(train_cfg)
    for k in NON_SEMANTIC_TRAIN_FIELDS:
        d.pop(k, None)
    d["samples"] = [Path(s).name for s in d["samples"]]  # the file's content is covered by curate_h
    return config_hash("train", d, _section(cfg.student), curate_h)


# ----------------------------------------------------------------------------- stage bookkeeping


def _rel(path, root: Path) -> str:
    """Outputs under the run dir are stored relative (the run dir can be moved), others absolute."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


UNFINISHED = "<unfinished>"  # an output path that never exists: the stage started but has not finished


class StageState:
    """stages.json: {stage id: {hash, outputs, seconds, finished}}; rewritten atomically after each stage."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.run_dir = run_dir
        self.path = run_dir / "stages.json"
        self.log = log
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.events: list[tuple[str, str]] = []   # (stage id, "ran" | "skipped")

    def current(self, sid: str, h: str) -> bool:
        rec = self.data.get(sid)
        return bool(rec and rec.get("hash") == h and all((self.run_dir / o).exists() for o in rec.get("outputs", [])))

    def run(self, sid: str, h: str, fn: Callable[[], list[Path]], *, clean: list[Path] = ()) -> bool:
        """Run `fn` unless the stage is current; returns True when it ran.

        Before running, the stage is recorded with its hash and no outputs: if it is interrupted, a rerun
        with the same hash keeps what it left (the trainer resumes from its checkpoints); a rerun with
        another hash, or with no record at all, deletes `clean` first (outputs of another configuration
        are never resumed or mixed in)."""
        if self.current(sid, h):
            self.events.append((sid, "skipped"))
            self.log(f"[{sid}] skipped (outputs current, hash {h})")
            return False
        old = self.data.get(sid)
        if old is None or old.get("hash") != h:
            for p in clean:
                if p.exists():
                    self.log(f"[{sid}] removing {p} (made by another configuration)")
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        resumed = old is not None and old.get("hash") == h
        self.data[sid] = {"hash": h, "outputs": [UNFINISHED], "started": time.time()}
        self._write()
        t0 = time.time()
        self.log(f"[{sid}] {'resuming' if resumed else 'running'} (hash {h})")
        outputs = fn()
        dt = time.time() - t0
        self.data[sid] = {"hash": h, "outputs": [_rel(o, self.run_dir) for o in outputs],
                          "seconds": round(dt, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._write()
        self.events.append((sid, "ran"))
        self.log(f"[{sid}] done in {dt:.1f}s")
        return True

    def _write(self):
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


# ----------------------------------------------------------------------------- the stages


def _teacher_backend(t: TeacherSection):
    from ftcot_jax.teacher.run import make_backend

    args = SimpleNamespace(model=t.model, protocol=t.protocol, base_url=t.endpoint or None,
                           api_key_env=t.api_key_env or None, max_tokens=t.max_tokens, stop=list(t.stop),
                           concurrency=t.concurrency, timeout=t.timeout, max_attempts=t.max_attempts,
                           seed=None if t.seed < 0 else t.seed)
    return make_backend(args)


def cache_root(cfg: RunConfig) -> Path:
    return Path(cfg.teacher.cache_dir) if cfg.teacher.cache_dir else Path(cfg.run_dir) / "teacher_cache"


def teach(cfg: RunConfig, task: str, kind: str, log) -> Path:
    """Greedy teacher (kind ft_cot) on teacher.split, or D samples at diverse_temperature on train."""
    from ftcot_jax.teacher.cache import TeacherCache
    from ftcot_jax.teacher.run import run_teach, select_items

    t = cfg.teacher
    if kind == "diverse":
        temperature, samples, split = t.diverse_temperature, max(cfg.curate.diverse_samples), "train"
    else:
        temperature, samples, split = t.temperature, 1, t.split
    items = select_items(task, split)
    backend = _teacher_backend(t)
    with TeacherCache(cache_root(cfg), task=task, teacher_model=backend.model, temperature=temperature) as cache:
        report = run_teach(backend, cache, items, samples=samples, temperature=temperature,
                           concurrency=t.concurrency, progress=False)
        log(f"  teach {task} T={temperature:g} x{samples}: {report.summary().splitlines()[0]}")
        if report.failed:
            raise RuntimeError(f"teacher: {report.failed} of {report.pairs} {task} samples failed ("
                               f"{'; '.join(report.errors[:2])}); rerun to retry them")
        return cache.path


def curate(cfg: RunConfig, task: str, method: Method, out: Path, log) -> Path:
    from ftcot_jax import curate as curate_lib
    from ftcot_jax.samples import write_samples
    from ftcot_jax.tasks import load_task

    if method.kind == "ft":
        cur = curate_lib.vanilla(task, cfg.split_name)
    else:
        from ftcot_jax.teacher.cache import TeacherCache

        temperature = cfg.teacher.diverse_temperature if method.kind == "diverse" else cfg.teacher.temperature
        cache = TeacherCache(cache_root(cfg), task=task, teacher_model=cfg.teacher.model, temperature=temperature)
        indices = list(range(method.samples)) if method.kind == "diverse" else [0]
        cur = curate_lib.curate_cot(cache, completion_indices=indices, split_name=cfg.split_name, method=method.kind)
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


def needs_conversion(cfg: RunConfig) -> bool:
    """GGUF students are dequantised once into an HF dir (loading that takes seconds, a GGUF a minute)."""
    s = cfg.student
    return not s.from_scratch and (s.model == "smollm2-135m-instruct" or s.model.endswith(".gguf"))


def student_path(cfg: RunConfig) -> str:
    return str(Path(cfg.run_dir) / "student") if needs_conversion(cfg) else cfg.student.model


def prepare_student(cfg: RunConfig, out: Path, log) -> Path:
    from ftcot_jax import models

    t0 = time.time()
    model, tok = models.load(cfg.student.model)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    models.save_hf(model, tok, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    log(f"  student {cfg.student.model} -> {out} (HF format, {time.time() - t0:.0f}s)")
    return out / "config.json"


def train_config(cfg: RunConfig, task: str, method: Method, samples_path: Path) -> TrainConfig:
    s, e = cfg.student, cfg.eval
    changes = {"run_dir": str(Path(cfg.run_dir) / "train" / task / method.key), "model": student_path(cfg),
               "tokenizer": s.tokenizer, "from_scratch": s.from_scratch, "model_config": s.model_config,
               "precision": s.precision, "task": task, "method": method.train_method,
               "samples": [str(samples_path)], "split_name": cfg.split_name, "eval_limit": e.limit,
               "eval_batch_size": e.batch_size, "eval_max_new_tokens": e.max_new_tokens,
               "eval_every_epochs": e.every_epochs}
    d = config_lib.to_dict(cfg.train)
    d.update(changes)
    return config_lib.from_dict(TrainConfig, d)


def load_student(cfg: RunConfig):
    """(model, tokenizer) of the student before fine-tuning."""
    from ftcot_jax import models

    s = cfg.student
    if s.from_scratch:
        from transformers import AutoTokenizer

        hf = s.model_config
        if hf is None:
            hf = json.loads((Path(s.model) / "config.json").read_text())
        tok = AutoTokenizer.from_pretrained(s.tokenizer or s.model)
        return models.from_config(hf, seed=cfg.train.seed), tok
    return models.load(student_path(cfg))


def zero_shot(cfg: RunConfig, task: str, student, out: Path, log) -> Path:
    """The un-fine-tuned student on the test split with the reference zero-shot prompt (template zs)."""
    from ftcot_jax import decode, prompts, scoring
    from ftcot_jax.tasks import load_task

    model, tok = student
    model_type = "encoder_decoder" if model.config.is_encoder_decoder else "decoder"
    examples = load_task(task).split("test", cfg.split_name)
    if cfg.eval.limit:
        examples = examples[: cfg.eval.limit]
    prompts = [prompts.zero_shot_prompt(ex.question, model_type) for ex in examples]
    t0 = time.time()
    gens = decode.generate(model, tok, prompts, max_new_tokens=cfg.eval.zero_shot_max_new_tokens,
                           batch_size=cfg.eval.batch_size, stop=list(cfg.eval.zero_shot_stop) or None)
    records = []
    for ex, prompt, g in zip(examples, prompts, gens):
        r = scoring.evaluate_completion(task, g.text, ex.answer, "zs", g.finish_reason)
        records.append({"sample_index": ex.sample_index, "question": ex.question, "answer": ex.answer,
                        "prompt": prompt, "completion": g.text, "finish_reason": g.finish_reason, **r})
    summary = scoring.summarize(records)
    result = {"task": task, "method": "zero_shot", "kind": "zero_shot", "label": "Zero-shot", "template": "zs",
              "params": _count_params(model),
              "best_over_epochs": {"epoch": None, **summary}, "last_epoch": {"epoch": None, **summary},
              "history": [], "samples": 0, "records": records}
    _write_json(out, result)
    log(f"  zero-shot {task}: accuracy {100 * summary['accuracy']:.2f}% (n={summary['n']}, {time.time() - t0:.0f}s)")
    return out


def collect(cfg: RunConfig, task: str, method: Method, train_dir: Path, out: Path) -> Path:
    """eval/<task>/<key>.json from the trainer's results.json (per-epoch test accuracy)."""
    res = json.loads((train_dir / "results.json").read_text())
    result = {"task": task, "method": method.key, "label": method.label, "kind": method.kind,
              "diverse_samples": method.samples if method.kind == "diverse" else None,
              "template": "ft_token" if method.kind == "ft" else "ft_cot_token",
              "best_over_epochs": res.get("best_over_epochs"), "last_epoch": res.get("last_epoch"),
              "history": res.get("history", []), "samples": res.get("samples"), "steps": res.get("steps"),
              "truncated_prompts": res.get("truncated_prompts"), "truncated_labels": res.get("truncated_labels"),
              "train_dir": str(train_dir.relative_to(cfg.run_dir)), "params": _export_params(train_dir / "export")}
    _write_json(out, result)
    return out


def _count_params(model) -> int:
    import math

    import jax
    from flax import nnx

    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _export_params(export_dir: Path) -> int | None:
    """Parameter count from the exported safetensors header (tied weights are stored once)."""
    import math
    import struct

    total = 0
    files = sorted(export_dir.glob("*.safetensors")) if export_dir.is_dir() else []
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total or None


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    events: list[tuple[str, str]]      # (stage id, ran | skipped), in order
    report_path: Path | None
    table: str
    seconds: float


def run(cfg: RunConfig, *, log: Callable[[str], None] | None = None, train_hook: Callable | None = None) -> RunResult:
    """Run every stage that is not current. `train_hook(step, metrics)` is passed to the trainer's
    on_step (tests use it to interrupt training)."""
    from ftcot_jax import report as report_lib
    from ftcot_jax import train as train_lib

    t_start = time.time()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(run_dir / "pipeline.log", "a", buffering=1)

    def _log(msg: str):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        logfile.write(line + "\n")
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)

    try:
        config_lib.save_config(cfg, run_dir / "config.json")
        state = StageState(run_dir, _log)
        methods = methods_of(cfg)
        _log(f"run {run_dir}: tasks {', '.join(cfg.tasks)}; methods {', '.join(m.key for m in methods)}; "
             f"student {cfg.student.display_name}; teacher {cfg.teacher.model}")
        student_h = config_hash(_section(cfg.student), cfg.train.seed)
        if needs_conversion(cfg):
            out = run_dir / "student"
            state.run("prepare/student", config_hash("student", _section(cfg.student)),
                      lambda: [prepare_student(cfg, out, _log)], clean=[out])
        eval_outputs: list[Path] = []
        for task in cfg.tasks:
            # --- teach (once per teacher kind the methods need)
            teach_h = {}
            for kind in sorted({m.kind for m in methods if m.kind != "ft"}):
                h = teacher_hash(cfg, task, kind)
                sid = f"teach/{task}/{'greedy' if kind == 'ft_cot' else 'diverse'}"
                state.run(sid, h, lambda kind=kind: [teach(cfg, task, kind, _log)])
                teach_h[kind] = h
            # --- curate
            curate_h = {}
            for m in methods:
                path = run_dir / "samples" / f"{task}__{m.key}.tfrecord"
                h = config_hash("curate", task, cfg.split_name, m.key, m.kind, m.samples,
                                cfg.curate.max_train_questions, teach_h.get(m.kind, ""))
                state.run(f"curate/{task}/{m.key}", h, lambda m=m, path=path: [curate(cfg, task, m, path, _log)],
                          clean=[path])
                curate_h[m.key] = h
            # --- evaluate the student before fine-tuning
            if cfg.eval.zero_shot:
                out = run_dir / "eval" / task / "zero_shot.json"
                h = config_hash("zero_shot", task, cfg.split_name, student_h, cfg.eval.limit, cfg.eval.batch_size,
                                cfg.eval.zero_shot_max_new_tokens, list(cfg.eval.zero_shot_stop))
                state.run(f"evaluate/{task}/zero_shot", h,
                          lambda out=out: [zero_shot(cfg, task, load_student(cfg), out, _log)], clean=[out])
                eval_outputs.append(out)
            # --- train (resumable) + collect its per-epoch evaluation
            for m in methods:
                tcfg = train_config(cfg, task, m, run_dir / "samples" / f"{task}__{m.key}.tfrecord")
                train_dir = Path(tcfg.run_dir)
                h = train_hash(cfg, tcfg, curate_h[m.key])
                sid = f"train/{task}/{m.key}"

                def do_train(tcfg=tcfg, train_dir=train_dir):
                    res = train_lib.train(tcfg, on_step=train_hook)
                    if res.resumed_from is not None:
                        _log(f"  resumed {train_dir} from step {res.resumed_from}")
                    return [train_dir / "results.json"]

                state.run(sid, h, do_train, clean=[train_dir])
                out = run_dir / "eval" / task / f"{m.key}.json"
                state.run(f"evaluate/{task}/{m.key}", config_hash("collect", h),
                          lambda m=m, train_dir=train_dir, out=out: [collect(cfg, task, m, train_dir, out)],
                          clean=[out])
                eval_outputs.append(out)
        # --- report (cheap: always rewritten from the eval files)
        rep = report_lib.write_report([run_dir], run_dir, paper=cfg.report.paper, plots=cfg.report.plots)
        state.events.append(("report", "ran"))
        _log(f"[report] {rep.path}")
        dt = time.time() - t_start
        _log(f"pipeline finished in {dt:.0f}s")
        return RunResult(run_dir, state.events, rep.path, rep.table, dt)
    finally:
        logfile.close()


# ----------------------------------------------------------------------------- the paper's grid

PAPER_STUDENTS = ("gpt2", "gpt2-medium", "gpt2-large", "t5-small", "t5-base", "t5-large",
                  "google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large")
NO_DIVERSE = ("gsm8k", "aqua", "commonsense_qa")   # no T=0.7 teacher data in the paper


def paper_diverse_d(task: str) -> int | None:
    if task in NO_DIVERSE:
        return None
    return 64 if task in ("multiarith", "svamp") else 8


def paper_grid() -> list[tuple[str, list[str]]]:
    """(cell name, overrides) for every cell of the paper's open-model grid: student x task x method."""
    from ftcot_jax.tasks import TASK_NAMES

    cells = []
    for student in PAPER_STUDENTS:
        sname = student.split("/")[-1]
        for task in TASK_NAMES:
            methods = [("ft", ["curate.methods=[ft]"]), ("ft_cot", ["curate.methods=[ft_cot]"])]
            d = paper_diverse_d(task)
            if d is not None:
                methods.append((f"ft_cot_t70_{d}aug", ["curate.methods=[diverse]", f"curate.diverse_samples=[{d}]"]))
            for key, extra in methods:
                name = f"{sname}/{task}/{key}"
                cells.append((name, [f"student.model={student}", f"tasks=[{task}]", f"run_dir=runs/paper/{name}",
                                     *extra]))
    return cells


def paper_cell(name: str) -> list[str]:
    cells = dict(paper_grid())
    if name not in cells:
        raise ValueError(f"unknown paper grid cell '{name}'; expected STUDENT/TASK/METHOD such as "
                         f"gpt2/multiarith/ft_cot (list them with `ftcot run CONFIG --list-paper-cells`)")
    return cells[name]


# ----------------------------------------------------------------------------- CLI


def run_command(args) -> int:
    if args.list_paper_cells:
        for name, _ in paper_grid():
            print(name)
        return 0
    if not args.config:
        raise ValueError("ftcot run needs CONFIG (a YAML file), e.g. configs/quickstart.yaml")
    overrides = list(args.overrides) + list(getattr(args, "set_overrides", []) or [])
    if args.paper_cell:
        overrides = paper_cell(args.paper_cell) + overrides
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_run_config(args.config, overrides)
    if args.dry_run:
        print(json.dumps(config_lib.to_dict(cfg), indent=2))
        return 0
    res = run(cfg)
    print(res.table)
    print(f"\nreport: {res.report_path}   wall time: {res.seconds:.0f}s   "
          f"stages ran: {sum(e == 'ran' for _, e in res.events)}, skipped: {sum(e == 'skipped' for _, e in res.events)}")
    return 0
