"""tensorflow-datasets exposure without TensorFlow (tasks/tfds_builder.py): build into a tmp data_dir, read back,
compare; by registered name in a fresh process; `ftcot tasks tfds`."""

import subprocess
import sys
import textwrap

import pytest

from ftcot_jax.tasks import load_task


def _as_records(source):
    out = []
    for i in range(len(source)):
        r = source[i]
        out.append({k: (v.decode("utf-8") if isinstance(v, bytes) else int(v)) for k, v in r.items()})
    return out


def _expected(task, split):
    rows = []
    for e in task.split(split):
        r = {"sample_index": e.sample_index, "question": e.question, "answer": e.answer}
        if task.has_rationale:
            r["rationale"] = e.rationale
        rows.append(r)
    return rows


@pytest.mark.parametrize("name", ["coin_flip", "strategy_qa"])  # one without, one with a gold rationale
def test_build_and_read_back(tmp_path, name):
    from ftcot_jax.tasks.tfds_builder import data_source, prepare

    task = load_task(name)
    builder = prepare(name, tmp_path)
    assert builder.info.full_name == f"ftcot_reasoning_tasks/{name}/1.0.0"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": len(task.split_indices("train")),
        "test": len(task.split_indices("test")),
    }
    assert ("rationale" in builder.info.features) == task.has_rationale
    for split in ("train", "test"):
        assert _as_records(data_source(name, split, tmp_path)) == _expected(task, split)  # same rows, same order


def test_registered_name_and_no_tensorflow(tmp_path):
    """tfds.data_source by name works in a fresh process and never imports TensorFlow."""
    code = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        import ftcot_jax.tasks.tfds_builder  # registers ftcot_reasoning_tasks
        ds = tfds.data_source("ftcot_reasoning_tasks/last_letter_concatenation", split="test",
                              data_dir={str(tmp_path)!r})
        print(len(ds), ds[0]["answer"].decode(), "tensorflow" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first = load_task("last_letter_concatenation").split("test")[0]
    assert out.stdout.splitlines()[-1].split() == ["150", first.answer, "False"]  # tfds logs its progress first


def test_cli_tasks_tfds(tmp_path, capsys):
    from ftcot_jax import cli

    assert cli.main(["tasks", "tfds", "last_letter_concatenation", "--data-dir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("ftcot_reasoning_tasks/last_letter_concatenation/1.0.0: test=150, train=350 at ")
    assert str(tmp_path) in line
