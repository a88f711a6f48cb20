"""The pipeline's schema: one `RunConfig` (`ftcot run CONFIG`) composes the trainer's `TrainConfig` (section
`train`) with the teacher, curation and report sections; `student` and `eval` are the trainer's own sections,
set once here for every (task, method) the run trains.

    cfg = load_run_config("configs/quickstart.yaml", ["train.epochs=2"])

It is loaded by the same strict loader as every schema (unknown keys are errors naming the key, values
are type-checked, `a.b=value` overrides).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftcot_jax.config.loader import check_choice, load_config
from ftcot_jax.config.train import EvalSection, StudentSection, TrainConfig
from ftcot_jax.tasks import TASK_NAMES
from ftcot_jax.tasks.rationale_sources import check_supported

# Train keys the pipeline sets itself for each (task, method): train key -> the run key that decides it.
PIPELINE_TRAIN_FIELDS = {
    "run_dir": "run_dir",
    "student": "student",
    "eval": "eval",
    "task": "tasks",
    "method": "curate.methods",
    "samples": "curate.methods",
    "split_name": "split_name",
}

CURATE_METHODS = ("ft", "ft_cot", "diverse", "step_by_step")


@dataclasses.dataclass(frozen=True)
class TeacherSection:
    """Who writes the rationales. `reference` is a program (offline), anything else a model name on an
    OpenAI-compatible server (endpoint = base URL ending in /v1; the key comes from `api_key_env`)."""

    model: str = "reference"
    protocol: str = "completions"  # completions | chat
    endpoint: str = ""  # "" = $OPENAI_BASE_URL
    api_key_env: str = ""  # "" = OPENAI_API_KEY
    temperature: float = 0.0  # Fine-tune-CoT teacher: greedy (reference)
    diverse_temperature: float = 0.7  # diverse reasoning teacher (reference: T=0.7, D samples)
    # Questions the greedy teacher answers: auto = only the train questions curation uses; train | test | all
    # (all = the paper's: the test split too, for the teacher's own test accuracy, at extra cost).
    split: str = "auto"
    max_tokens: int = 128
    stop: tuple[str, ...] = ("END",)
    concurrency: int = 8
    timeout: float = 60.0
    max_attempts: int = 8
    seed: int = -1  # -1 = no request seed
    cache_dir: str = ""  # "" = <run_dir>/teacher_cache; share one between runs to teach once
    # A released teacher instead of an endpoint: a folder of CompletionDataset files (the reference's
    # `B_<teacher>__C_<key>/` with one D_<task>.json per task) or one such file; nothing is asked of a server.
    import_from: str = ""

    def __post_init__(self):
        if not self.model:
            raise ValueError("teacher.model is empty; expected 'reference' or a model name on the server")
        if self.import_from and self.model == "reference":
            raise ValueError(
                "teacher.import_from names a released teacher's files; set teacher.model to that teacher "
                "(the files' base_model, e.g. text-davinci-002)"
            )
        check_choice("teacher.protocol", self.protocol, ("completions", "chat"))
        check_choice("teacher.split", self.split, ("auto", "train", "test", "all"))
        if self.temperature < 0 or self.diverse_temperature < 0:
            raise ValueError("teacher temperatures must be >= 0")
        if self.max_tokens < 1 or self.concurrency < 1 or self.max_attempts < 1 or self.timeout <= 0:
            raise ValueError("teacher.max_tokens, concurrency, max_attempts must be >= 1 and timeout > 0")


@dataclasses.dataclass(frozen=True)
class CurateSection:
    # ft (gold answers) | ft_cot (greedy teacher) | diverse | step_by_step (ft_cot's samples as predict + explain)
    methods: tuple[str, ...] = ("ft", "ft_cot")
    diverse_samples: tuple[int, ...] = ()  # D values for `diverse` (paper: 64 MultiArith/SVAMP, 8 else)
    max_train_questions: int = 0  # 0 = whole train split; N = its first N questions (all methods)

    def __post_init__(self):
        if not self.methods:
            raise ValueError("curate.methods is empty; expected some of: " + ", ".join(CURATE_METHODS))
        for m in self.methods:
            check_choice("curate.methods[]", m, CURATE_METHODS)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"curate.methods lists a method twice: {list(self.methods)}")
        if "diverse" in self.methods and not self.diverse_samples:
            raise ValueError("curate.methods has 'diverse' but curate.diverse_samples is empty (e.g. [8])")
        if any(d < 1 for d in self.diverse_samples) or len(set(self.diverse_samples)) != len(self.diverse_samples):
            raise ValueError(f"curate.diverse_samples must be distinct integers >= 1, got {list(self.diverse_samples)}")
        if self.max_train_questions < 0:
            raise ValueError(f"curate.max_train_questions must be >= 0, got {self.max_train_questions}")


@dataclasses.dataclass(frozen=True)
class ReportSection:
    paper: bool = True  # put the paper's numbers for the same student beside ours
    plots: bool = True


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One `ftcot run`: tasks x curation methods, one student, one teacher."""

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
        self.student.check_given()
        default = TrainConfig()
        for name, where in PIPELINE_TRAIN_FIELDS.items():
            if getattr(self.train, name) != getattr(default, name):
                raise ValueError(f"train.{name} is set by the pipeline; set {where} instead")
        if set(self.curate.methods) - {"ft"} and self.teacher.model == "reference":
            for t in self.tasks:
                check_supported(t)


def load_run_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, base: dict | None = None
) -> RunConfig:
    """YAML/JSON file + `a.b=value` overrides -> validated RunConfig (errors name the key)."""
    return load_config(path, list(overrides), cls=RunConfig, base=base)
