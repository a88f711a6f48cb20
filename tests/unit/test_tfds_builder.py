"""tensorflow-datasets builder (tasks/tfds_builder.py) errors: unknown task or split, AQuA train offline, a
corrupt source file named. (Builds and reads back: tests/integration/test_tfds_builder.py.)"""

import pytest


def test_unknown_task_and_split(tmp_path):
    from ftcot_jax.tasks.tfds_builder import builder, data_source

    with pytest.raises(ValueError, match="unknown task 'nope'"):
        builder("nope", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'dev'; expected 'train' or 'test'"):
        data_source("coin_flip", "dev", tmp_path)


def test_aqua_offline_error(tmp_path, monkeypatch):
    from ftcot_jax.tasks import AquaTrainUnavailable
    from ftcot_jax.tasks.tfds_builder import prepare

    monkeypatch.setenv("FTCOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FTCOT_OFFLINE", "1")
    with pytest.raises(AquaTrainUnavailable, match="the train split needs AQuA train.json"):
        prepare("aqua", tmp_path / "tfds")


def test_custom_source_dir_with_corrupt_file(tmp_path):
    import shutil

    from ftcot_jax.tasks import TaskDataError, default_data_dir
    from ftcot_jax.tasks.tfds_builder import FtcotReasoningTasks, TaskConfig

    src = tmp_path / "src"
    shutil.copytree(default_data_dir() / "split", src / "split")
    shutil.copytree(default_data_dir() / "raw" / "coin_flip", src / "raw" / "coin_flip")
    (src / "raw" / "coin_flip" / "coin_flip.json").write_text('{"examples": [')
    b = FtcotReasoningTasks(
        config=TaskConfig(task="coin_flip", source_dir=str(src), name="coin_flip_local"),
        data_dir=str(tmp_path / "tfds"),
    )
    with pytest.raises(TaskDataError, match=r"task 'coin_flip': .*coin_flip.json is corrupt or truncated"):
        b.download_and_prepare()
