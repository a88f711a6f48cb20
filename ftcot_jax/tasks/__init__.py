"""The 12 Fine-tune-CoT reasoning tasks, preprocessed and split exactly like the reference
(github.com/itsnamgyu/reasoning-teacher: `notebooks/old/Data Preparation.ipynb`, `src/data/split.py`).

    from ftcot_jax.tasks import load_task
    task = load_task("date_understanding")
    train = task.split("train")                 # list[Example]; Example(sample_index, question, answer, rationale)
    task.split_indices("test", "template")      # App. E.3 template split (multiarith, date_understanding)

AQuA: only the 254 test rows are bundled; see `Task` and `ftcot_jax.tasks.aqua` for the train part.
TensorFlow-datasets access (no TensorFlow needed): `ftcot_jax.tasks.tfds_builder`.
"""

from ftcot_jax.tasks.aqua import AquaTrainUnavailable
from ftcot_jax.tasks.preprocess import TaskDataError
from ftcot_jax.tasks.task import (
    SPLITS,
    TASK_INFO,
    TASK_NAMES,
    Example,
    Task,
    TaskInfo,
    default_data_dir,
    load_task,
    subsample_indices,
)

__all__ = [
    "SPLITS",
    "TASK_INFO",
    "TASK_NAMES",
    "AquaTrainUnavailable",
    "Example",
    "Task",
    "TaskDataError",
    "TaskInfo",
    "default_data_dir",
    "load_task",
    "subsample_indices",
]
