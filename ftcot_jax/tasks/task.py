"""The 12 reasoning tasks: rows, reference splits and few-shot-CoT prompts, read from bundled files.

Plain Python (json + numpy for one shuffle), no TensorFlow: loading every task takes about a second.
The data directory defaults to the files bundled in `ftcot_jax/data/` (raw benchmark files + the
reference split files); `FTCOT_DATA_DIR` or `load_task(..., data_dir=...)` point it elsewhere (same layout).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftcot_jax.tasks import aqua as _aqua
from ftcot_jax.tasks.preprocess import BUILDERS, TaskDataError, read_json

# Paper table order (the reference's `src/data/dataset.py` DATASET_KEYS).
TASK_NAMES: tuple[str, ...] = (
    "single_eq",
    "addsub",
    "multiarith",
    "gsm8k",
    "aqua",
    "svamp",
    "date_understanding",
    "tracking_shuffled_objects",
    "last_letter_concatenation",
    "coin_flip",
    "commonsense_qa",
    "strategy_qa",
)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class TaskInfo:
    display_name: str
    group: str
    num_examples: int  # the reference's DATASET_SIZES
    answer_type: str
    has_rationale: bool


TASK_INFO: dict[str, TaskInfo] = {
    "single_eq": TaskInfo("SingleEq", "arithmetic", 508, "number (float string, '43.0')", False),
    "addsub": TaskInfo("AddSub", "arithmetic", 395, "number (as given, '43')", False),
    "multiarith": TaskInfo("MultiArith", "arithmetic", 600, "integer", False),
    "gsm8k": TaskInfo("GSM8K", "arithmetic", 8792, "number (may have commas, '2,125')", True),
    "aqua": TaskInfo("AQUA", "arithmetic", 97721, "choice A-E", True),
    "svamp": TaskInfo("SVAMP", "arithmetic", 1000, "number (float string, '51.0')", False),
    "date_understanding": TaskInfo("Date Understanding", "other", 369, "choice A-F", False),
    "tracking_shuffled_objects": TaskInfo("Tracking Shuffled Objects", "other", 750, "choice A-C", False),
    "last_letter_concatenation": TaskInfo("Last Letter Concatenation", "symbolic", 500, "letters ('yajo')", False),
    "coin_flip": TaskInfo("Coin Flip", "symbolic", 500, "yes/no", False),
    "commonsense_qa": TaskInfo("CommonSenseQA", "commonsense", 10962, "choice A-E", False),
    "strategy_qa": TaskInfo("StrategyQA", "commonsense", 2290, "Yes/No", True),
}

AQUA_TEST_START = 97467  # AQuA rows 0..97466 are the official train set (not bundled), 97467.. the test set


@dataclass(frozen=True)
class Example:
    """One unified row, exactly as the reference stored it (`data/dataset/<key>.json`, built by its
    `notebooks/old/Data Preparation.ipynb`)."""

    sample_index: int
    question: str
    answer: str
    rationale: str | None  # gold rationale for gsm8k, aqua, strategy_qa; None elsewhere


def default_data_dir() -> Path:
    env = os.environ.get("FTCOT_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown task '{name}'; expected one of: {', '.join(TASK_NAMES)}")


class Task:
    """One task: its rows (`examples`), reference splits and few-shot-CoT prompt.

    `examples[i].sample_index == i` for the 11 fully bundled tasks. AQuA is the exception: only its
    254 test rows (sample_index 97467..97720) are bundled, so until the official train file has been
    fetched, `examples` holds just those 254 rows (`examples[j].sample_index == 97467 + j`). Once
    `split("train")` has fetched it (or it is already in the cache, see `ftcot_jax.tasks.aqua`),
    `examples` holds all 97,721 rows with `examples[i].sample_index == i` (a cached train file is
    loaded on the first access to `examples`). Use `example(sample_index)`
    to look a row up in either state. `split_indices("train")` never needs the network.
    """

    def __init__(self, name: str, data_dir: Path):
        if name not in TASK_INFO:
            raise _unknown(name)
        info = TASK_INFO[name]
        self.name = name
        self.display_name = info.display_name
        self.group = info.group
        self.answer_type = info.answer_type
        self.has_rationale = info.has_rationale
        self.num_examples = info.num_examples
        self.data_dir = data_dir
        rows = BUILDERS[name](data_dir / "raw")
        offset = AQUA_TEST_START if name == "aqua" else 0
        self._examples = [Example(offset + i, q, a, r) for i, (q, a, r) in enumerate(rows)]
        self._complete = name != "aqua"
        self._splits: dict[str, dict[str, list[int]]] = {}
        self._few_shot = self._read_few_shot()

    def __repr__(self) -> str:
        return f"Task({self.name!r}, examples={len(self._examples)}/{self.num_examples})"

    # --- rows -------------------------------------------------------------------

    @property
    def examples(self) -> list[Example]:
        if not self._complete and _aqua.train_path().exists():
            self._load_aqua_train()  # AQuA with its train file already cached: expose every row
        return self._examples

    @property
    def complete(self) -> bool:
        """True when every row is loaded (always, except AQuA before its train file is fetched)."""
        return self._complete

    def example(self, sample_index: int) -> Example:
        if self._complete:
            if 0 <= sample_index < len(self._examples):
                return self._examples[sample_index]
        elif AQUA_TEST_START <= sample_index < self.num_examples:
            return self._examples[sample_index - AQUA_TEST_START]
        elif 0 <= sample_index < AQUA_TEST_START:
            self._load_aqua_train()
            return self._examples[sample_index]
        raise IndexError(f"task '{self.name}': sample_index {sample_index} out of range 0..{self.num_examples - 1}")

    def _load_aqua_train(self) -> None:
        train = [Example(i, q, a, r) for i, (q, a, r) in enumerate(_aqua.load_train_rows())]
        self._examples = train + [e for e in self._examples if e.sample_index >= AQUA_TEST_START]
        self._complete = True

    # --- splits -----------------------------------------------------------------

    @property
    def split_names(self) -> tuple[str, ...]:
        """Available split files: "default" plus "template" for multiarith and date_understanding."""
        found = sorted(p.name[len(self.name) + 2 : -5] for p in (self.data_dir / "split").glob(f"{self.name}__*.json"))
        return tuple(sorted(found, key=lambda s: (s != "default", s)))

    def _split_file(self, split_name: str) -> dict[str, list[int]]:
        if split_name not in self._splits:
            path = self.data_dir / "split" / f"{self.name}__{split_name}.json"
            if not path.exists():
                names = ", ".join(self.split_names) or "none"
                raise ValueError(f"task '{self.name}' has no split '{split_name}'; expected one of: {names}")
            data = read_json(path, self.name, "{'train': [sorted ints], 'test': [sorted ints]}")
            for part in SPLITS:
                idx = data.get(part) if isinstance(data, dict) else None
                ok = isinstance(idx, list) and all(type(i) is int and 0 <= i < self.num_examples for i in idx)
                if not ok or idx != sorted(set(idx)):
                    raise TaskDataError(
                        f"task '{self.name}': {path} '{part}' is not a sorted list of distinct ints in "
                        f"0..{self.num_examples - 1}"
                    )
            self._splits[split_name] = {part: data[part] for part in SPLITS}
        return self._splits[split_name]

    def split_indices(self, split: str, split_name: str = "default") -> list[int]:
        """Sorted sample indices of `split` ("train" | "test") in the reference split file `split_name`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}' for task '{self.name}'; expected 'train' or 'test'")
        return list(self._split_file(split_name)[split])

    def split(self, split: str, split_name: str = "default") -> list[Example]:
        """The examples of a split. AQuA train fetches the official train file on first use."""
        indices = self.split_indices(split, split_name)
        if not self._complete and any(i < AQUA_TEST_START for i in indices):
            self._load_aqua_train()
        return [self.example(i) for i in indices]

    # --- few-shot-CoT -----------------------------------------------------------

    def _read_few_shot(self) -> dict | None:
        path = self.data_dir / "split" / "few_shot_cot_prompts.json"
        data = read_json(path, self.name, "{task: {'prompt', 'sample_indices', 'comment'}}")
        entry = data.get(self.name) if isinstance(data, dict) else None
        if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("prompt"), str)):
            raise TaskDataError(f"task '{self.name}': {path} entry has no 'prompt' string")
        return entry

    @property
    def few_shot_cot_prompt(self) -> str | None:
        """Few-shot-CoT exemplars ("Q: ...\\nA: ... The answer is X." joined by newlines); None for tracking."""
        return None if self._few_shot is None else self._few_shot["prompt"]

    @property
    def few_shot_cot_sample_indices(self) -> list[int]:
        """Train indices the exemplars were drawn from ([] when adapted from the Few-shot-CoT paper)."""
        return [] if self._few_shot is None else list(self._few_shot.get("sample_indices", []))


@functools.cache
def _load_cached(name: str, data_dir: str) -> Task:
    return Task(name, Path(data_dir))


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """Load a task (cached per process). Unknown name -> ValueError listing the 12 names."""
    if name not in TASK_INFO:
        raise _unknown(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return _load_cached(name, str(root.resolve()))


def subsample_indices(indices: list[int], n: int, seed: int = 0) -> list[int]:
    """Reference `subsample_indices` (`src/data/split.py`): sorted(RandomState(seed).permutation(indices)[:n])
    (few-shot ablations)."""
    if n > len(indices):
        raise ValueError(f"cannot subsample {n} of {len(indices)} indices; expected n <= {len(indices)}")
    return sorted(int(i) for i in np.random.RandomState(seed).permutation(indices)[:n])
