"""A student to use: load what training left behind, with the format it was trained on.

    s = load_student("runs/quickstart/train/last_letter_concatenation/ft_cot")        # the best epoch
    s = load_student(".../ft_cot", step="last")   # or an int step, or ".../checkpoints/24", or an export dir
    text = decode.generate(s.model, s.tokenizer, [s.trained.prompt(q)], max_new_tokens=...)[0].text
    s.trained.parse(text)   # Parsed(rationale=..., answer=...) by the task's reference parsing

What can be loaded (`locate`):
- a train directory (`ftcot train`'s run dir, or `RUN/train/<task>/<method>` of `ftcot run`): its config.json
  (TrainConfig) and checkpoints/; the step is chosen by `step`: "best" (the best test accuracy over epochs,
  the report's headline), "last", or a step number;
- one orbax step directory (`.../checkpoints/<step>`);
- an `ftcot run` run directory holding exactly one trained student (several: a ValueError listing them);
- an exported student (an HF directory with `ftcot_student.json` beside config.json): plain weights that
  still know their training format;
- anything `models.load` takes (HF dir, hub id, smollm2-135m-instruct, .gguf): `trained` is None.

Only the parameters of the chosen step are read (`train.checkpoint.restore_params`), not the optimizer state.
`export_student` writes the chosen step as an HF directory (transformers loads it in PyTorch) plus
`ftcot_student.json`; `train_and_export` trains (train.loop.train) and exports the best epoch into
run_dir/export when the config's `export` is on. `evaluate_student` scores a loaded student on a task's
split without training (greedy, and self-consistency with `eval.samples` > 1), writing the trainer's files.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import multihost_utils

from ftcot_jax import evaluation, models, prompts, scoring
from ftcot_jax.config import EvalSection, TrainConfig, load_config, to_dict
from ftcot_jax.files import write_json_atomic, write_jsonl_atomic
from ftcot_jax.models.api import model_kind
from ftcot_jax.paths import as_path, download_tree, is_remote, replace_dir, rmtree
from ftcot_jax.tasks import TASK_NAMES, load_task
from ftcot_jax.train.checkpoint import abstract_like, read_position, restore_params, saved_steps
from ftcot_jax.train.loop import Trainer, TrainResult, predictions_path, train, votes_path
from ftcot_jax.train.student import build_student

FORMAT_FILE = "ftcot_student.json"  # beside an exported student's config.json
STEP_CHOICES = "best, last or a step number"


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A completion split the way the student was trained to write it."""

    rationale: str | None  # the text before the answer separator (CoT students), None for answer-only ones
    answer: str | None  # the task's reference parsing of the completion; None when nothing parses


@dataclasses.dataclass(frozen=True)
class TrainedFormat:
    """How a fine-tuned student expects its input and writes its output, and which checkpoint this is."""

    task: str
    method: str  # ft | ft_cot | step_by_step
    template: str  # prompts.METHOD_TEMPLATE[method]
    model_kind: str  # decoder | encoder_decoder
    step: int | None
    epoch: int | None
    accuracy: float | None  # test accuracy after that epoch, when it was evaluated
    selection: str  # best | last | step
    max_new_tokens: int  # the evaluation's generation budget in training

    def prompt(self, question: str) -> str:
        """The exact input the student was trained on for `question`."""
        return prompts.finetune_input(self.template, self.model_kind, question)

    def explain_prompt(self, question: str) -> str:
        """A Distilling step-by-step student's other task: the input asking for its rationale."""
        if self.method != "step_by_step":
            raise ValueError(f"a {self.method} student learnt no explain task; only step_by_step students did")
        return prompts.finetune_input("sbs_explain", self.model_kind, question)

    def parse(self, completion: str) -> Parsed:
        """The rationale (text before the template's answer prefix) and the answer parsed by the task's
        reference rule, the one the evaluation scores with."""
        prediction, _ = scoring.cleanse_prediction(self.task, completion, self.template)
        answer = None if prediction is None else _answer_text(prediction)
        prefix = prompts.PREDICTION_PREFIXES[self.template]
        if prefix is None:
            return Parsed(rationale=None, answer=answer)
        at = completion.find(prefix)
        return Parsed(rationale=(completion[:at] if at >= 0 else completion).strip(), answer=answer)

    def card(self) -> dict:
        """The JSON-able description (GET /v1/models, `ftcot_student.json`)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LoadedStudent:
    model: nnx.Module
    tokenizer: Any
    source: str  # the directory (or name) the weights came from
    trained: TrainedFormat | None  # None: a plain pretrained model, no training format known


@dataclasses.dataclass(frozen=True)
class Location:
    """What a path names: a train dir (+ a step dir), an exported student, or something for models.load."""

    kind: str  # train | export | model
    path: Path | str
    step_dir: Path | None = None


def _answer_text(prediction) -> str:
    if isinstance(prediction, float):
        return str(int(prediction)) if prediction.is_integer() else repr(prediction)
    return str(prediction)


def _is_train_dir(p: Path) -> bool:
    return (p / "checkpoints").is_dir() and (p / "config.json").is_file()


def trained_students(run_dir: Path) -> list[Path]:
    """The train directories of an `ftcot run` run directory (RUN/train/<task>/<method>), sorted."""
    root = as_path(run_dir) / "train"
    return sorted(p for p in root.glob("*/*") if _is_train_dir(p)) if root.is_dir() else []


def locate(name_or_path) -> Location:
    """Classify what `name_or_path` names (see the module docstring); a ValueError for a directory that is
    none of those."""
    name = str(name_or_path)
    p = as_path(name)
    if not p.is_dir():
        return Location("model", name)  # a hub id, an alias, a .gguf, or a missing path: models.load says which
    if p.parent.name == "checkpoints" and p.name.isdigit() and _is_train_dir(p.parent.parent):
        return Location("train", p.parent.parent, p)
    if p.name == "checkpoints" and _is_train_dir(p.parent):
        return Location("train", p.parent)
    if _is_train_dir(p):
        return Location("train", p)
    if (p / "config.json").is_file() and (p / FORMAT_FILE).is_file():
        return Location("export", p)
    if (p / "stages.json").is_file() or (p / "train").is_dir():
        found = trained_students(p)
        if len(found) == 1:
            return Location("train", found[0])
        if not found:
            raise ValueError(f"{p}: an `ftcot run` directory with no trained student yet (no train/<task>/<method>)")
        raise ValueError(f"{p}: holds {len(found)} trained students; name one: " + ", ".join(str(f) for f in found))
    if (p / "config.json").is_file():
        try:
            hf = json.loads((p / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}/config.json: not readable JSON ({e})") from None
        if isinstance(hf, dict) and hf.get("model_type"):
            return Location("model", name)
    raise ValueError(
        f"{p}: not a student; expected an `ftcot run` run dir, a train dir (config.json + checkpoints/), "
        "a checkpoint dir (checkpoints/<step>), an exported student or an HF model dir (config.json with model_type)"
    )


def _train_config(train_dir: Path) -> TrainConfig:
    try:
        return load_config(train_dir / "config.json", cls=TrainConfig)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{train_dir}/config.json: not a training config ({e})") from None


def _history(train_dir: Path, steps: list[int]) -> list[dict]:
    """Per-epoch evaluations: results.json when training finished, else the newest checkpoint's record."""
    results = train_dir / "results.json"
    if results.is_file():
        return json.loads(results.read_text()).get("history", [])
    return read_position(train_dir / "checkpoints" / str(max(steps))).get("history", []) if steps else []


def select_step(train_dir: Path, step: str | int = "best") -> tuple[int, dict | None, str]:
    """(step, its evaluation or None, selection) of a train dir. `step`: best | last | a step number."""
    steps = saved_steps(train_dir / "checkpoints")
    if not steps:
        raise ValueError(f"{train_dir}: no finished checkpoint in checkpoints/ (training has not saved a step yet)")
    return choose_step(_history(train_dir, steps), steps, step, where=str(train_dir))


def choose_step(
    history: list[dict], steps: list[int], step: str | int = "best", *, where: str
) -> tuple[int, dict | None, str]:
    """The one rule for which saved step a student is: `step` is best (the first epoch of the highest test
    accuracy in `history`; the last saved step when nothing was evaluated), last or a step number, among the
    saved `steps`. Returns (step, its evaluation or None, selection: best | last | step); a step that was not
    kept is a ValueError naming `where` and the saved steps."""
    by_step = {h.get("step"): h for h in history}
    if step == "last":
        chosen, selection = max(steps), "last"
    elif step == "best":
        if not history:
            chosen, selection = max(steps), "last"  # never evaluated: nothing to choose by
        else:
            best = max(history, key=lambda h: h["accuracy"])
            if best["step"] not in steps:
                raise ValueError(
                    f"{where}: the best epoch (step {best['step']}) was not kept (keep_best=0?); saved steps: "
                    f"{', '.join(map(str, steps))}; choose one of them or last"
                )
            chosen, selection = best["step"], "best"
    else:
        try:
            chosen = int(step)
        except (TypeError, ValueError):
            raise ValueError(f"step {step!r}: expected {STEP_CHOICES}") from None
        if chosen not in steps:
            raise ValueError(f"{where}: no checkpoint of step {chosen}; saved steps: {', '.join(map(str, steps))}")
        selection = "step"
    return chosen, by_step.get(chosen), selection


def _student_config(cfg: TrainConfig, train_dir, local_dir: Path) -> TrainConfig:
    """The training config with paths that still resolve (a run moved, or read from another directory) and the
    student rebuilt without its pretrained weights (the checkpoint replaces them), in fp32 for inference. A
    student directory on a store has its config and tokenizer files (not its weights) copied into `local_dir`."""
    st = cfg.student
    model = st.model
    if model and is_remote(model):
        model = str(download_tree(as_path(model), local_dir, skip_suffixes=models.WEIGHT_SUFFIXES))
    elif model and not Path(model).is_absolute() and not Path(model).exists() and not is_remote(train_dir):
        for anc in Path(train_dir).resolve().parents:  # `ftcot run` keeps its converted student at RUN/student
            if (anc / "stages.json").is_file() and (anc / Path(model).name).is_dir():
                model = str(anc / Path(model).name)
                break
    has_config = st.model_config is not None or (model and (Path(model) / "config.json").is_file())
    student = dataclasses.replace(st, model=model, precision="fp32", from_scratch=bool(has_config) or st.from_scratch)
    return dataclasses.replace(cfg, student=student)


def training_format(
    cfg: TrainConfig, *, task: str, model_kind: str, step: int, evaluation: dict | None, selection: str
) -> TrainedFormat:
    """The TrainedFormat of a checkpoint of the training `cfg` describes; `evaluation` is its epoch's summary."""
    return TrainedFormat(
        task=task,
        method=cfg.method,
        template=cfg.template,
        model_kind=model_kind,
        step=step,
        epoch=None if evaluation is None else evaluation.get("epoch"),
        accuracy=None if evaluation is None else evaluation.get("accuracy"),
        selection=selection,
        max_new_tokens=cfg.eval.max_new_tokens,
    )


def _task_of(cfg: TrainConfig, train_dir: Path) -> str:
    if cfg.task:
        return cfg.task
    results = train_dir / "results.json"
    if results.is_file():
        task = json.loads(results.read_text()).get("task")
        if task:
            return task
    raise ValueError(f"{train_dir}: the training config names no task and there is no results.json to read it from")


def load_student(name_or_path, *, step: str | int = "best") -> LoadedStudent:
    """The student `name_or_path` names (module docstring), at `step` for a train directory."""
    loc = locate(name_or_path)
    if loc.kind == "model":
        model, tok = models.load(loc.path)
        return LoadedStudent(model, tok, str(loc.path), None)
    if loc.kind == "export":
        model, tok = models.load(loc.path)
        card = json.loads((as_path(loc.path) / FORMAT_FILE).read_text())
        try:
            fmt = TrainedFormat(**card)
        except TypeError as e:
            raise ValueError(f"{loc.path}/{FORMAT_FILE}: unexpected fields ({e})") from None
        return LoadedStudent(model, tok, str(loc.path), fmt)
    train_dir = as_path(loc.path)
    cfg = _train_config(train_dir)
    if loc.step_dir is not None:
        chosen, evaluation, _ = select_step(train_dir, int(loc.step_dir.name))
        selection = "step"
    else:
        chosen, evaluation, selection = select_step(train_dir, step)
    with tempfile.TemporaryDirectory(prefix="ftcot-student-") as tmp:
        student = build_student(_student_config(cfg, train_dir, Path(tmp)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=device), student.abstract_params
    )
    params = restore_params(train_dir / "checkpoints" / str(chosen), abstract)
    model = nnx.merge(student.graphdef, params)
    fmt = training_format(
        cfg,
        task=_task_of(cfg, train_dir),
        model_kind=model_kind(model),
        step=chosen,
        evaluation=evaluation,
        selection=selection,
    )
    return LoadedStudent(model, student.tokenizer, str(train_dir / "checkpoints" / str(chosen)), fmt)


def export_student(student: LoadedStudent, out_dir) -> Path:
    """Write `student` as an HF directory that transformers loads in PyTorch, plus its training format
    (`ftcot_student.json`) when it has one. The directory is written beside `out_dir` and put in its place
    when whole, so an interrupted export never leaves a half-written student under the name."""
    out = as_path(out_dir)
    if student.tokenizer is None:
        raise ValueError(f"{student.source}: no tokenizer to export with the weights")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        rmtree(tmp)
    models.save_hf(student.model, student.tokenizer, tmp)
    if student.trained is not None:
        write_json_atomic(tmp / FORMAT_FILE, student.trained.card())
    replace_dir(tmp, out)
    return out


def evaluate_student(
    student: LoadedStudent,
    out_dir,
    *,
    task: str | None = None,
    split: str = "test",
    split_name: str = "default",
    eval_cfg: EvalSection = EvalSection(),
) -> dict:
    """Evaluate a fine-tuned student on `task`'s `split` (default: the task it was trained on) with its training
    format, as the trainer's epoch evaluation does; writes out_dir/predictions/epoch_NNN.jsonl (NNN: the
    checkpoint's epoch, else 0), epoch_NNN.samples.jsonl (the votes, with `eval_cfg.samples` > 1) and
    out_dir/results.json (the summary, the decode seconds, where the student came from). Returns results."""
    fmt = student.trained
    if fmt is None:
        raise ValueError(
            f"{student.source}: not a fine-tuned student (no training format), so no prompt to evaluate with"
        )
    if student.tokenizer is None:
        raise ValueError(f"{student.source}: no tokenizer files; cannot encode questions")
    task = task or fmt.task
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected train or test")
    examples = load_task(task).split(split, split_name)
    examples = examples[: eval_cfg.limit] if eval_cfg.limit else examples
    epoch = fmt.epoch if fmt.epoch is not None else 0
    ev = evaluation.evaluate(
        student.model, student.tokenizer, examples, task=task, template=fmt.template, eval_cfg=eval_cfg, epoch=epoch
    )
    out = as_path(out_dir)
    write_jsonl_atomic(predictions_path(out, epoch), ev.records)
    if ev.votes is not None:
        write_jsonl_atomic(votes_path(out, epoch), ev.votes)
    results = {
        "task": task,
        "split": split,
        "split_name": split_name,
        "method": fmt.method,
        "student": student.source,
        "trained": fmt.card(),
        "summary": {"epoch": epoch, "step": fmt.step, **ev.summary},
        "seconds": ev.seconds,
        "eval": to_dict(eval_cfg),
    }
    write_json_atomic(out / "results.json", results)
    return results


# ----------------------------------------------------------------------------- training, then the export


def _gather_params(params):
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def export_best_epoch(trainer: Trainer, result: TrainResult) -> None:
    """The step `choose_step` names "best" (the report's headline: the best epoch, else the last step) as an HF
    directory in run_dir/export, with its training format; when the best epoch was not kept, the last step,
    with a warning. Every process takes part: the parameters are restored with the training shardings and
    gathered; process 0 writes."""
    run_dir = trainer.run_dir
    steps = saved_steps(run_dir / "checkpoints") or [trainer.step]
    try:
        chosen, evaluation_, selection = choose_step(result.history, steps, "best", where=str(run_dir))
    except ValueError as e:
        if jax.process_index() == 0:
            print(f"warning: {e}; exporting the last step {trainer.step}", flush=True)
        chosen, evaluation_, selection = choose_step(result.history, steps, "last", where=str(run_dir))
    params = trainer.state.params
    if chosen != trainer.step:
        abstract = abstract_like(trainer.student.abstract_params, trainer.setup.state_shardings.params)
        params = restore_params(run_dir / "checkpoints" / str(chosen), abstract)
    host_params = _gather_params(params)
    if jax.process_index() == 0:
        student = trainer.student
        fmt = training_format(
            trainer.cfg,
            task=trainer.task,
            model_kind=student.model_type,
            step=chosen,
            evaluation=evaluation_,
            selection=selection,
        )
        model = nnx.merge(student.graphdef, host_params)
        export_student(LoadedStudent(model, student.tokenizer, str(run_dir), fmt), run_dir / "export")


def train_and_export(cfg: TrainConfig, **kwargs) -> TrainResult:
    """`train.loop.train(cfg, **kwargs)`, then, when `cfg.export` is on and every step ran, the best epoch
    as an HF directory in run_dir/export (`export_best_epoch`)."""
    return train(cfg, on_finished=export_best_epoch if cfg.export else None, **kwargs)
