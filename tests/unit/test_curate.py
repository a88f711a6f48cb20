"""Curation (ftcot_jax/pipeline/curate.py), CompletionDataset import/export (teacher/compat.py) and the
`ftcot cache` / `ftcot curate` commands."""

import json

import pytest

from ftcot_jax.cli import main
from ftcot_jax.pipeline import curate
from ftcot_jax.samples import read_samples
from ftcot_jax.tasks import load_task
from ftcot_jax.teacher import compat
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.records import TeacherRecord

TASK = "coin_flip"


def _rec(ex, split, c, answer_text, rationale="It flips twice.", model="m", temperature=0.0):
    return TeacherRecord(
        task=TASK,
        split=split,
        sample_index=ex.sample_index,
        completion_index=c,
        teacher_model=model,
        endpoint="http://127.0.0.1:1/v1",
        protocol="completions",
        question=ex.question,
        gold_answer=ex.answer,
        reasoning_prompt="Q: ...",
        rationale=rationale,
        reasoning_finish_reason="stop",
        answer_prompt="...\nTherefore, the answer is",
        answer_text=answer_text,
        finish_reason="stop",
        temperature=temperature,
        seed=-1,
        prompt_tokens=3,
        completion_tokens=4,
        timestamp=1763770000.5,
    )


def _flip(answer):
    return "no" if answer == "yes" else "yes"


@pytest.fixture(scope="module")
def coin():
    t = load_task(TASK)
    return t, t.split("train"), t.split("test")


def test_ft_cot_keeps_correct_train_rationales(tmp_path, coin):
    _, train, test = coin
    with TeacherCache(tmp_path, task=TASK, teacher_model="m", temperature=0) as c:
        c.append(_rec(train[0], "train", 0, f" {train[0].answer}."))
        c.append(_rec(train[1], "train", 0, f" {_flip(train[1].answer)}."))  # wrong: dropped
        c.append(_rec(train[2], "train", 0, f" Yes, {train[2].answer}."))  # first candidate decides
        c.append(_rec(train[3], "train", 0, f" {train[3].answer}.", rationale="  "))  # correct but empty
        c.append(_rec(train[4], "train", 1, f" {train[4].answer}."))  # completion 1 is not Fine-tune-CoT
        c.append(_rec(test[0], "test", 0, f" {test[0].answer}."))  # test questions never become samples
    cur = curate.curate_cot(c, completion_indices=[0])
    expected_keep = [0] + ([2] if train[2].answer == "yes" else [])
    assert [s.sample_index for s in cur.samples] == [train[i].sample_index for i in expected_keep]
    s = cur.samples[0]
    assert (s.method, s.completion_index, s.answer, s.rationale, s.question) == (
        "ft_cot",
        0,
        train[0].answer,
        "It flips twice.",
        train[0].question,
    )
    assert cur.train_pairs == len(train) and cur.missing == len(train) - 4 and cur.empty == 1
    assert cur.teacher_total == 6
    assert cur.teacher_correct == 4 + (train[2].answer == "yes")
    assert f"kept {len(expected_keep)}/{len(train)} train samples" in cur.summary()


def test_diverse_keeps_every_correct_sample(tmp_path, coin):
    _, train, _ = coin
    with TeacherCache(tmp_path, task=TASK, teacher_model="m", temperature=0.7) as c:
        for i in range(3):
            for k in range(4):
                good = (i + k) % 2 == 0
                c.append(
                    _rec(
                        train[i],
                        "train",
                        k,
                        f" {train[i].answer if good else _flip(train[i].answer)}.",
                        rationale=f"r{k}",
                        temperature=0.7,
                    )
                )
    cur, path = curate.curate(
        TASK, "diverse", cache_root=tmp_path, teacher_model="m", samples=4, out_dir=tmp_path / "s"
    )
    assert path.name == "coin_flip__ft_cot_t70_4aug.tfrecord"
    got = [(s.sample_index, s.completion_index) for s in read_samples(path)]
    assert got == [(train[i].sample_index, k) for i in range(3) for k in range(4) if (i + k) % 2 == 0]
    assert cur.kept == 6 and cur.train_pairs == 4 * len(train) and cur.missing == 4 * (len(train) - 3)


def test_vanilla_and_errors(tmp_path, coin):
    _, train, _ = coin
    cur, path = curate.curate(TASK, "ft", out_dir=tmp_path)
    samples = read_samples(path)
    assert len(samples) == len(train) == cur.kept
    assert all(s.method == "ft" and s.rationale == "" for s in samples)
    assert [s.answer for s in samples] == [ex.answer for ex in train]
    with pytest.raises(FileNotFoundError, match="no teacher cache at .*run `ftcot teach --task coin_flip"):
        curate.curate(TASK, "ft_cot", cache_root=tmp_path, teacher_model="nobody", out_dir=tmp_path)
    with pytest.raises(ValueError, match="needs the teacher model"):
        curate.curate(TASK, "ft_cot", cache_root=tmp_path, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown curation method 'cot'"):
        curate.curate(TASK, "cot", out_dir=tmp_path)
    # A cache made from other data (question differs) is refused, not mixed into training.
    with TeacherCache(tmp_path, task=TASK, teacher_model="x", temperature=0) as c:
        bad = _rec(train[0], "train", 0, f" {train[0].answer}.", model="x")
        c.append(TeacherRecord(**{**bad.__dict__, "question": "Another question?"}))
    with pytest.raises(ValueError, match="another question or answer than the dataset's"):
        curate.curate(TASK, "ft_cot", cache_root=tmp_path, teacher_model="x", out_dir=tmp_path)


def test_completion_dataset_round_trip(tmp_path, coin):
    _, train, test = coin
    with TeacherCache(tmp_path / "a", task=TASK, teacher_model="org/teacher", temperature=0.7) as c:
        for ex, split in ((train[0], "train"), (test[1], "test")):
            for k in range(2):
                c.append(_rec(ex, split, k, f" {ex.answer}.", rationale=f"R{k}", model="org/teacher", temperature=0.7))
    path, n = compat.export_cache(c, tmp_path / "x")
    assert n == 4 and path == tmp_path / "x" / "B_org_teacher__C_zs_cot_t70" / "D_coin_flip.json"
    doc = json.loads(path.read_text())
    assert doc["metadata"]["dataset_key"] == TASK and doc["metadata"]["completion_key"] == "zs_cot_t70"
    first = doc["data"][str(train[0].sample_index)][0]
    assert first["reasoning_completion"] == "R0" and first["completion"] == f" {train[0].answer}."
    cache2, added, skipped = compat.import_file(path, tmp_path / "b")
    assert (added, skipped) == (4, 0)
    assert cache2.records() == c.records()  # exact, extras included
    assert compat.import_file(path, tmp_path / "b")[1:] == (0, 4)  # nothing is imported twice


def test_import_paper_format(tmp_path, coin):
    _, train, test = coin
    comps = {}
    for ex in (train[0], test[0]):
        comps[str(ex.sample_index)] = [
            {
                "sample_index": ex.sample_index,
                "completion_index": 0,
                "question": ex.question,
                "answer": ex.answer,
                "reasoning_prompt": f"Q: {ex.question}\nA: Let's think step by step.",
                "reasoning_completion": " Flip.",
                "reasoning_finish_reason": "stop",
                "prompt": "...",
                "completion": f" {ex.answer}",
                "finish_reason": "stop",
            }
        ]
    f = tmp_path / "D_coin_flip.json"
    f.write_text(
        json.dumps(
            {
                "metadata": {
                    "base_model": "text-davinci-002",
                    "dataset_key": TASK,
                    "completion_key": "zs_cot",
                    "train_key": None,
                    "prediction_template": "zs_cot",
                },
                "data": comps,
            }
        )
    )
    cache, added, _ = compat.import_file(f, tmp_path / "c")
    assert (cache.teacher_model, cache.temperature, added) == ("text-davinci-002", 0.0, 2)
    recs = cache.records()
    assert {r.split for r in recs} == {"train", "test"}
    assert all(r.protocol == "completions" and r.endpoint == "import:D_coin_flip.json" and r.seed == -1 for r in recs)
    cur = curate.curate_cot(cache, completion_indices=[0])
    assert [s.rationale for s in cur.samples] == ["Flip."]
    student = json.loads(f.read_text())
    student["metadata"]["train_key"] = "ft_cot"
    f.write_text(json.dumps(student))
    with pytest.raises(ValueError, match="holds student completions"):
        compat.import_file(f, tmp_path / "d")
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a CompletionDataset"):
        compat.import_file(f, tmp_path / "d")


def test_cli_teach_inspect_verify_curate_export_import(tmp_path, capsys):
    root, out = str(tmp_path / "cache"), str(tmp_path / "samples")
    assert (
        main(
            [
                "teach",
                "--task",
                "svamp",
                "--model",
                "reference",
                "--split",
                "train",
                "--limit",
                "40",
                "--cache-dir",
                root,
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["cache", "inspect", "--cache-dir", root]) == 0
    text = capsys.readouterr().out
    assert "40 records for 40 questions (split train: 40" in text and "teacher accuracy 100.00% (40/40" in text
    assert main(["cache", "verify", "--cache-dir", root]) == 0
    assert (
        main(["curate", "--task", "svamp", "--teacher-model", "reference", "--cache-dir", root, "--out-dir", out]) == 0
    )
    text = capsys.readouterr().out
    assert "kept 40/700 train samples (660 not in the cache)" in text
    assert len(read_samples(tmp_path / "samples" / "svamp__ft_cot.tfrecord")) == 40
    assert main(["cache", "export", "--cache-dir", root, "--out", str(tmp_path / "x")]) == 0
    exported = tmp_path / "x" / "B_reference__C_zs_cot" / "D_svamp.json"
    assert main(["cache", "import", "--cache-dir", str(tmp_path / "c2"), str(exported)]) == 0
    assert "imported 40 completions" in capsys.readouterr().out
    # Corrupt one byte in the middle: verify names the file and the offset and exits non-zero.
    (f,) = TeacherCache(root, task="svamp", teacher_model="reference", temperature=0).record_files()
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    assert main(["cache", "verify", "--cache-dir", root]) == 1
    err = capsys.readouterr().err
    assert f"CORRUPT {f}: corrupt record at byte offset" in err
    assert main(["cache", "verify", "--repair", "--cache-dir", root]) == 1  # a CRC error is not a torn tail
    f.write_bytes(bytes(raw[: len(raw) // 2]))  # a torn tail is
    assert main(["cache", "verify", "--repair", "--cache-dir", root]) == 0
    assert f"repaired {f}" in capsys.readouterr().out
    assert main(["cache", "inspect", "--cache-dir", root, "--task", "gsm8k"]) == 2
    assert "no teacher cache under" in capsys.readouterr().err


def test_cli_reference_teacher_refuses_unsupported_task(tmp_path, capsys):
    assert (
        main(
            [
                "teach",
                "--task",
                "commonsense_qa",
                "--model",
                "reference",
                "--limit",
                "2",
                "--cache-dir",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "cannot teach 'commonsense_qa'" in capsys.readouterr().err
