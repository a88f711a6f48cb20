"""The 12 tasks as a tensorflow-datasets builder, built locally from the bundled files (no network).

TensorFlow is not needed. tfds 4.9.10 can generate and read datasets without TF when the files are
ArrayRecord (`file_format="array_record"`, the default of this builder) and are read through
`builder.as_data_source()` / `tfds.data_source(...)` (random access, numpy/bytes values). Only
`builder.as_dataset()` / `tfds.load()` (tf.data pipelines) import TensorFlow: install the `tf` extra for those.

    from ftcot_jax.tasks.tfds_builder import FtcotReasoningTasks, data_source
    test = data_source("date_understanding", "test", data_dir="/tmp/tfds")   # builds once, then reads
    test[0]  # {'sample_index': 1, 'question': b'...', 'answer': b'B'}   (text comes back as utf-8 bytes)

    # or, after importing this module (registers "ftcot_reasoning_tasks"):
    tfds.data_source("ftcot_reasoning_tasks/gsm8k", split="train", data_dir="/tmp/tfds")

Configs: one per task (`ftcot_reasoning_tasks/<task>`), splits `train`/`test` = the reference default
split, records in split order (shuffling disabled). Features: sample_index (int64), question, answer and,
for gsm8k/aqua/strategy_qa, rationale (text). AQuA's train split needs the AQuA train file: building
the `aqua` config offline without it raises `AquaTrainUnavailable` (see `ftcot_jax.tasks.aqua`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ftcot_jax.tasks.task import TASK_INFO, TASK_NAMES, load_task

_DESCRIPTION = (
    "The 12 reasoning tasks of Fine-tune-CoT (Ho et al. 2023, 'Large Language Models Are Reasoning "
    "Teachers'), preprocessed like the reference code, with its train/test splits."
)
_CITATION = """@inproceedings{ho2023large,
  title={Large Language Models Are Reasoning Teachers},
  author={Ho, Namgyu and Schmid, Laura and Yun, Se-Young},
  booktitle={ACL},
  year={2023}
}"""


class TaskConfig(tfds.core.BuilderConfig):
    """One task. `source_dir`: ftcot data files in the bundled layout (None: the bundled ones); a custom
    config needs its own `name` (tfds refuses to shadow the predefined config of the same task)."""

    def __init__(self, *, task: str, source_dir: str | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name or task, description=TASK_INFO[task].display_name, **kwargs)
        self.task = task
        self.source_dir = source_dir


class FtcotReasoningTasks(tfds.core.GeneratorBasedBuilder):
    """tfds builder `ftcot_reasoning_tasks`: one config per task, train/test splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Reference preprocessing and default splits of reasoning-teacher."}
    BUILDER_CONFIGS = [TaskConfig(task=name) for name in TASK_NAMES]
    # tfds 4.9.10's default `code_path` probes `importlib_resources` (a backport it only declares for
    # Python < 3.9) for any builder defined in a package; the plain file path is what it computes anyway.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # ArrayRecord is the format tfds can write and read without TensorFlow.
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"sample_index": np.int64, "question": tfds.features.Text(), "answer": tfds.features.Text()}
        if TASK_INFO[self.builder_config.task].has_rationale:
            features["rationale"] = tfds.features.Text()
        # DatasetInfo directly: dataset_info_from_configs() would look for metadata files next to this module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("question", "answer"),
            homepage="https://github.com/itsnamgyu/reasoning-teacher",
            citation=_CITATION,
            disable_shuffling=True,  # keep split order (ascending sample_index)
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local
        task = load_task(self.builder_config.task, self.builder_config.source_dir)
        return {split: self._generate_examples(task, split) for split in ("train", "test")}

    def _generate_examples(self, task, split):
        for ex in task.split(split):
            record = {"sample_index": ex.sample_index, "question": ex.question, "answer": ex.answer}
            if task.has_rationale:
                record["rationale"] = ex.rationale
            yield ex.sample_index, record


def builder(task: str, data_dir: str | os.PathLike | None = None) -> FtcotReasoningTasks:
    """The builder for one task writing to `data_dir` (default: tfds's ~/tensorflow_datasets)."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")
    return FtcotReasoningTasks(config=task, data_dir=None if data_dir is None else os.fspath(data_dir))


def prepare(task: str, data_dir: str | os.PathLike | None = None) -> FtcotReasoningTasks:
    """Build (once) the task's ArrayRecord files without any network access; returns the builder."""
    b = builder(task, data_dir)
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return b


def data_source(task: str, split: str, data_dir: str | os.PathLike | None = None):
    """Random-access, TF-free view of one split (builds it first if needed)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; expected 'train' or 'test'")
    return prepare(task, data_dir).as_data_source(split=split)
