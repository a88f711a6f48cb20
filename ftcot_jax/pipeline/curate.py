"""Teacher cache -> fine-tune sample files, and the curation methods a run config asks for.

- Fine-tune-CoT (`ft_cot`): the greedy teacher's completion 0 of every train question, kept when the
  step-2 answer text parses to the gold answer with the zs_cot rule (first candidate in the whole text).
- Diverse reasoning (`diverse`, D samples): completions 0..D-1 of the T>0 teacher, every correct one kept
  (no dedup of identical rationales, as in the reference).
- Vanilla fine-tuning (`ft`): every train question with its gold answer, no teacher, no filtering.
- Distilling step-by-step (`step_by_step`): the very samples Fine-tune-CoT keeps (same teacher, same filter),
  marked for the trainer to learn each as two tasks, `predict` and `explain` (prompts.METHOD_TRAIN_TEMPLATES).

Only train-split questions become samples (the split file's train indices, whatever a record's split
says). Labels use the dataset's gold answer, not the teacher's prediction. Teacher accuracy is reported
over every record in the cache (train + test), as the paper's tables do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftcot_jax.config.run import RunConfig
from ftcot_jax.paths import as_path
from ftcot_jax.samples import FinetuneSample, gold_samples, write_samples
from ftcot_jax.scoring import check_answer
from ftcot_jax.tasks import load_task
from ftcot_jax.tasks.task import AQUA_TEST_START
from ftcot_jax.teacher.cache import TeacherCache

METHODS = ("ft_cot", "diverse", "ft", "step_by_step")
DEFAULT_TEMPERATURE = {"ft_cot": 0.0, "diverse": 0.7, "step_by_step": 0.0}
# Method kinds as the paper's tables and our reports name them.
METHOD_LABELS = {
    "zero_shot": "Zero-shot",
    "ft": "Fine-tune",
    "ft_cot": "Fine-tune-CoT",
    "diverse": "Diverse reasoning",
    "step_by_step": "Distilling step-by-step",
}


def train_key(method: str, samples: int = 1, temperature: float = 0.7) -> str:
    """The reference's train keys: "ft_cot", "ft_cot_t70_8aug", "ft"; and "step_by_step"."""
    if method in ("ft_cot", "ft", "step_by_step"):
        return method
    if method == "diverse":
        return f"ft_cot_t{round(temperature * 100)}_{samples}aug"
    raise ValueError(f"unknown curation method '{method}'; expected one of: {', '.join(METHODS)}")


@dataclass(frozen=True)
class Method:
    """One curation method of a run: its sample file, training run and report row."""

    key: str  # file/dir name and report column: ft | ft_cot | ft_cot_t70_8aug | step_by_step
    kind: str  # ft | ft_cot | diverse | step_by_step
    samples: int = 1  # D for diverse

    @property
    def train_method(self) -> str:
        return self.kind if self.kind in ("ft", "step_by_step") else "ft_cot"

    @property
    def teacher_kind(self) -> str | None:
        """Whose rationales it learns from: the greedy teacher (ft_cot), the sampled one (diverse), none (ft)."""
        return {"ft": None, "diverse": "diverse"}.get(self.kind, "ft_cot")

    @property
    def label(self) -> str:
        if self.kind == "diverse":
            return f"{METHOD_LABELS['diverse']} D={self.samples}"
        return METHOD_LABELS[self.kind]


def methods_of(cfg: RunConfig) -> list[Method]:
    """The run's methods in config order; `diverse` becomes one method per D in curate.diverse_samples."""
    out = []
    for m in cfg.curate.methods:
        if m == "diverse":
            for d in cfg.curate.diverse_samples:
                out.append(Method(train_key("diverse", d, cfg.teacher.diverse_temperature), "diverse", d))
        else:
            out.append(Method(m, m))
    return out


@dataclass(frozen=True)
class Curation:
    task: str
    method: str
    samples: list[FinetuneSample]
    train_pairs: int  # train (question, completion index) pairs asked for
    missing: int  # of those, not in the cache (not taught yet, or failed)
    empty: int  # answered correctly but with an empty rationale (nothing to learn from): dropped
    teacher_correct: int  # over every record in the cache
    teacher_total: int

    @property
    def kept(self) -> int:
        return len(self.samples)

    @property
    def teacher_accuracy(self) -> float:
        return self.teacher_correct / self.teacher_total if self.teacher_total else 0.0

    def summary(self, path=None) -> str:
        if self.method == "ft":
            line = f"{self.task} ft: {self.kept} train questions with gold answers (no teacher)"
        else:
            line = (
                f"{self.task} {self.method}: teacher accuracy {100 * self.teacher_accuracy:.2f}% "
                f"({self.teacher_correct}/{self.teacher_total} cached, train+test); kept "
                f"{self.kept}/{self.train_pairs} train samples"
            )
            extra = [
                f"{n} {what}"
                for n, what in ((self.missing, "not in the cache"), (self.empty, "correct but empty"))
                if n
            ]
            if extra:
                line += f" ({', '.join(extra)})"
        return line + (f" -> {path}" if path else "")


def _dataset_row(task, idx: int):
    """The dataset's row, or None when it is not loaded offline (AQuA train before its download)."""
    if task.complete or idx >= AQUA_TEST_START:
        return task.example(idx)
    return None


def curate_cot(
    cache, *, completion_indices: list[int], split_name: str = "default", method: str = "ft_cot"
) -> Curation:
    """Correct teacher rationales of the train questions, for the given completion indices."""
    if not completion_indices:
        raise ValueError("completion_indices is empty; expected e.g. [0] (Fine-tune-CoT) or range(D)")
    task = load_task(cache.task)
    recs = cache.records()
    if not recs:
        raise ValueError(f"teacher cache {cache.path} holds no records; run `ftcot teach` first")
    by_key = {r.key: r for r in recs}
    teacher_correct = 0
    correct_keys = set()
    for r in recs:
        if check_answer(r.task, r.answer_text, r.gold_answer, "zs_cot"):
            teacher_correct += 1
            correct_keys.add(r.key)
    train = task.split_indices("train", split_name)
    samples, missing, empty = [], 0, 0
    for idx in train:
        row = None
        for c in completion_indices:
            r = by_key.get((idx, c))
            if r is None:
                missing += 1
                continue
            if r.key not in correct_keys:
                continue
            row = row or _dataset_row(task, idx)
            ours = (r.question.strip(), r.gold_answer.strip())
            if row is not None and ours != (row.question.strip(), row.answer.strip()):
                raise ValueError(
                    f"{cache.path}: record {cache.task}#{idx}/{c} has another question or answer than the "
                    "dataset's; was the cache made from a different version of the data?"
                )
            rationale = r.rationale.strip()
            if not rationale:
                empty += 1
                continue
            samples.append(
                FinetuneSample(
                    task=cache.task,
                    sample_index=idx,
                    completion_index=c,
                    question=r.question,
                    answer=r.gold_answer,
                    rationale=rationale,
                    method="step_by_step" if method == "step_by_step" else "ft_cot",
                )
            )
    if missing == len(train) * len(completion_indices):
        raise ValueError(
            f"teacher cache {cache.path} has none of the {len(train)} train questions for completion "
            f"indices {completion_indices[0]}..{completion_indices[-1]}; "
            "run `ftcot teach` on the train split"
        )
    return Curation(
        cache.task, method, samples, len(train) * len(completion_indices), missing, empty, teacher_correct, len(recs)
    )


def vanilla(task_name: str, split_name: str = "default") -> Curation:
    """Every train question with its gold answer (vanilla fine-tuning, no teacher): `samples.gold_samples`."""
    samples = gold_samples(task_name, "ft", split_name)
    return Curation(task_name, "ft", samples, len(samples), 0, 0, 0, 0)


def sample_path(out_dir, task: str, key: str) -> Path:
    return as_path(out_dir) / f"{task}__{key}.tfrecord"


def curate(
    task: str,
    method: str,
    *,
    cache_root=None,
    teacher_model: str | None = None,
    temperature: float | None = None,
    samples: int = 8,
    split_name: str = "default",
    out_dir,
) -> tuple[Curation, Path]:
    """Builds and writes one task's sample file; returns (curation, path)."""
    if method not in METHODS:
        raise ValueError(f"unknown curation method '{method}'; expected one of: {', '.join(METHODS)}")
    if method == "ft":
        cur = vanilla(task, split_name)
        key = "ft"
    else:
        if not teacher_model:
            raise ValueError(f"method '{method}' needs the teacher model whose cache to read (teacher_model)")
        if temperature is None:
            temperature = DEFAULT_TEMPERATURE[method]
        if method == "diverse" and samples < 1:
            raise ValueError(f"diverse reasoning needs samples >= 1, got {samples}")
        cache = TeacherCache(cache_root, task=task, teacher_model=teacher_model, temperature=temperature)
        if not cache.path.is_dir():
            raise FileNotFoundError(
                f"no teacher cache at {cache.path}; run `ftcot teach --task {task} --model "
                f"{teacher_model} --temperature {temperature:g}` first"
            )
        indices = list(range(samples)) if method == "diverse" else [0]
        cur = curate_cot(cache, completion_indices=indices, split_name=split_name, method=method)
        key = train_key(method, samples, temperature)
    if not cur.samples:
        raise ValueError(f"{task} {method}: no sample survived curation ({cur.summary()}); nothing written")
    path = sample_path(out_dir, task, key)
    write_samples(path, cur.samples)
    return cur, path
