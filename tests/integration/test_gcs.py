"""Run directories and teacher caches on gs://, against a real GCS API server on 127.0.0.1 (the `gcs` fixture,
tests/helpers/gcs.py): training killed (-9) mid-run and mid-save resumes from the bucket with the losses of an
uninterrupted run; `ftcot run` killed while teaching asks nothing twice; a bucket that cannot be reached is a
one-line error before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftcot_jax.paths import as_path, check_reachable
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.train.checkpoint import tmp_dirs
from tests.helpers.gcs import create_bucket
from tests.helpers.pipeline import tiny_run_config
from tests.helpers.train_subprocess import (
    REPO,
    env,
    free_port,
    kill_after_step,
    losses,
    make_inputs,
    run,
    train_cmd,
    write_config,
)

EPOCHS = 4  # 64 samples / batch 8 = 8 steps per epoch -> 32 steps; saves every 10 steps and at epoch ends
TOTAL = EPOCHS * 8
COMMON = dict(epochs=EPOCHS, checkpoint_every_steps=10, keep_last=2)
# metrics.jsonl rewritten on every log line, so the poller below sees progress at once
EAGER_METRICS = "import ftcot_jax.train.metrics as _m\n_m.REMOTE_FLUSH_S = 0.0\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gcs):
    root = tmp_path_factory.mktemp("gcs_resume")
    tok, samples = make_inputs(root)
    e = {**env(8, root / "jax_cache"), **gcs.env}
    ref_dir = root / "reference"  # uninterrupted, on local disk
    run(train_cmd(write_config(root / "ref.yaml", ref_dir, tok, samples, **COMMON)), e)
    ref = losses(ref_dir)
    assert sorted(ref) == list(range(1, TOTAL + 1))
    return root, tok, samples, e, ref


def test_train_killed_on_gcs_resumes_from_the_bucket(setup, gcs_dir):
    root, tok, samples, e, ref = setup
    run_dir = as_path(gcs_dir)
    cfg = write_config(root / "killed.yaml", gcs_dir, tok, samples, **COMMON)
    killed_at = kill_after_step(cfg, run_dir, e, 12, prelude=EAGER_METRICS, timeout=300, poll_s=0.05)
    assert killed_at < TOTAL, "the run ended before it could be killed"

    out = run(train_cmd(cfg, "--resume"), e)
    resumed_from = int((out.stdout + out.stderr).split("resuming from step ")[1].split()[0])
    assert resumed_from in (8, 10) and resumed_from <= killed_at
    after = losses(run_dir)
    assert sorted(after) == list(range(1, TOTAL + 1))
    for s in range(1, TOTAL + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])  # bitwise: same program, same data, same state
    assert not tmp_dirs(run_dir / "checkpoints")
    assert json.loads((run_dir / "results.json").read_text())["steps"] == TOTAL


KILL_IN_SAVE = """
import os, signal
from orbax.checkpoint._src.path import atomicity
_finalize = atomicity.CommitFileTemporaryPath.finalize
async def finalize(self, *a, **k):
    if "/checkpoints/20" in str(self._final_path):  # step 20's arrays are in the bucket, uncommitted: die now
        os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *a, **k)
atomicity.CommitFileTemporaryPath.finalize = finalize
"""


def test_train_killed_in_a_gcs_checkpoint_save_resumes(setup, gcs_dir):
    root, tok, samples, e, ref = setup
    run_dir = as_path(gcs_dir)
    cfg = write_config(root / "killed_in_save.yaml", gcs_dir, tok, samples, **COMMON)
    p = subprocess.run(train_cmd(cfg, prelude=KILL_IN_SAVE), env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    ckpt = run_dir / "checkpoints"
    assert [d.name for d in tmp_dirs(ckpt)] == ["20"]  # objects of step 20 without their commit_success.txt

    out = run(train_cmd(cfg), e)  # no --resume: resuming is automatic
    assert "resuming from step 16" in out.stdout + out.stderr  # the newest committed save (epoch 2 end)
    assert not tmp_dirs(ckpt)
    after = losses(run_dir)
    for s in range(1, TOTAL + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])
    steps = sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit())
    assert steps[-1] == TOTAL and len(steps) <= 2


# ----------------------------------------------------------------------------- ftcot run


KILL_WHILE_TEACHING = """
import os, signal, json
from ftcot_jax.teacher.cache import TeacherCache
_append = TeacherCache.append
def append(self, rec):
    _append(self, rec)
    with open({log!r}, "a") as f:  # every answer the cache took, across both runs
        f.write(json.dumps(rec.key) + "\\n")
    if {kill}:  # the first answer is in the bucket: die now
        os.kill(os.getpid(), signal.SIGKILL)
TeacherCache.append = append
"""


QUESTION = 'Take the last letters of each words in "Lucky Mireya" and concatenate them.'


def _ftcot(args, prelude: str, e) -> subprocess.CompletedProcess:
    code = f"{prelude}\nimport sys\nfrom ftcot_jax.cli import main\nsys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)


def test_pipeline_killed_while_teaching_on_gcs_asks_nothing_twice(tmp_path, gcs, gcs_dir, char_tokenizer_dir):
    run_dir, cache_dir = f"{gcs_dir}/run", f"{gcs_dir}/cache"
    path = tiny_run_config(
        tmp_path,
        tmp_path / "run",
        char_tokenizer_dir,
        teacher={"model": "reference", "cache_dir": cache_dir},
        curate={"methods": ["ft_cot"], "max_train_questions": 8},
        eval={"limit": 4, "batch_size": 4, "max_new_tokens": 16, "zero_shot": False},
    )
    e = {**env(1), **gcs.env}
    log = tmp_path / "appended.jsonl"
    args = ["run", path, "--set", f"run_dir={run_dir}", "--set", "train.export=true"]
    first = _ftcot(args, KILL_WHILE_TEACHING.format(log=str(log), kill=True), e)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    taught_first = [tuple(json.loads(x)) for x in log.read_text().splitlines()]
    assert len(taught_first) == 1  # killed right after its first answer was stored

    second = _ftcot(args, KILL_WHILE_TEACHING.format(log=str(log), kill=False), e)
    assert second.returncode == 0, second.stderr[-3000:]
    taught = [tuple(json.loads(x)) for x in log.read_text().splitlines()]
    assert len(taught) == len(set(taught))  # nothing taught twice
    cache = TeacherCache(f"{cache_dir}", task="last_letter_concatenation", teacher_model="reference", temperature=0)
    check = cache.verify()
    assert check["records"] == len(taught) and check["duplicates"] == 0
    assert cache.done_keys() == set(taught)
    run_path = as_path(run_dir)
    stages = json.loads((run_path / "stages.json").read_text())
    assert all("<unfinished>" not in s["outputs"] for s in stages.values())
    assert (run_path / "report.md").is_file() and (run_path / "eval" / "last_letter_concatenation").is_dir()
    assert json.loads((run_path / "train/last_letter_concatenation/ft_cot/results.json").read_text())["steps"] > 0

    # the student is used straight from the bucket: its best checkpoint, and the export the run wrote there
    student = f"{run_dir}/train/last_letter_concatenation/ft_cot"
    answers = []
    for where in (student, f"{student}/export"):
        asked = _ftcot(["ask", where, QUESTION, "--json"], "", e)
        assert asked.returncode == 0, asked.stderr[-2000:]
        answers.append(json.loads(asked.stdout.strip().splitlines()[-1]))
    assert answers[0] == answers[1] and answers[0]["question"] == QUESTION


# ----------------------------------------------------------------------------- unreachable


def test_unreachable_bucket_is_one_line_before_any_work(tmp_path, gcs):
    tok, samples = make_inputs(tmp_path, n_samples=8)
    cfg = write_config(tmp_path / "c.yaml", "gs://no-such-bucket/runs/x", tok, samples)
    p = subprocess.run(train_cmd(cfg), env={**env(8), **gcs.env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "gs://no-such-bucket/runs/x" in lines[0] and "no such bucket" in lines[0], p.stderr
    assert "student" not in p.stdout  # nothing started


def test_store_that_does_not_answer_is_one_line(gcs, monkeypatch):
    # a network that drops packets: the client hangs
    monkeypatch.setattr(type(as_path("gs://ftcot-test/x")), "exists", lambda self: time.sleep(5))
    with pytest.raises(ValueError, match=r"^gs://ftcot-test/x cannot be reached: no answer within 0.5 s"):
        check_reachable("gs://ftcot-test/x", timeout_s=0.5)


def test_store_refusing_the_credentials_is_one_line(gcs, monkeypatch):
    def refuse(self, data):
        raise PermissionError("403 Forbidden: caller does not have storage.objects.create access\nmore")

    monkeypatch.setattr(type(as_path("gs://ftcot-test/x")), "write_bytes", refuse)
    with pytest.raises(ValueError) as e:
        check_reachable("gs://ftcot-test/x")
    assert str(e.value).startswith("gs://ftcot-test/x cannot be reached: PermissionError: 403 Forbidden")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- docs/multihost.md, as written

FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for `gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command CMD`: CMD runs on 2 local
# "workers", each in its own home, found by jax.distributed.initialize() through Slurm-style variables.
cmd=""
while [[ $# -gt 0 ]]; do case "$1" in --command) cmd=$2; shift 2;; *) shift;; esac; done
pids=()
for i in 0 1; do
  w="$FAKE_TPU_ROOT/worker$i"
  (cd "$w" && HOME="$w" SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NTASKS=2 SLURM_STEP_NODELIST=127.0.0.1 \\
     bash -c "$cmd") > "$w.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"""


def _docs_train_command() -> str:
    """The `launch_tpu_vm.sh ... train` command of docs/multihost.md, continuation lines joined."""
    text = (REPO / "docs" / "multihost.md").read_text()
    block = text.split("## Cloud TPU VM")[1].split("```bash")[1].split("```")[0]
    joined = block.replace("\\\n", " ")
    (line,) = [x for x in joined.splitlines() if "launch_tpu_vm.sh" in x and " train " in x]
    return " ".join(line.split())


def test_docs_tpu_pod_command_runs_as_written(tmp_path, gcs):
    command = _docs_train_command()
    url = command.split("--run-dir ")[1].split()[0]
    assert url.startswith("gs://") and "distributed.enabled=true" in command
    bucket = url[len("gs://") :].split("/")[0]
    create_bucket(gcs, bucket)  # the docs' bucket, in the emulator
    tok, samples = make_inputs(tmp_path, n_samples=16)  # 2 steps
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gcloud").write_text(FAKE_GCLOUD)
    (bindir / "gcloud").chmod(0o755)
    for i in range(2):  # what `launch_tpu_vm.sh setup` leaves on each worker: ~/venv and ~/ftcot-jax
        w = tmp_path / f"worker{i}"
        (w / "venv" / "bin").mkdir(parents=True)
        (w / "venv" / "bin" / "activate").write_text(f". {sys.prefix}/bin/activate\n")
        (w / "ftcot-jax").mkdir()
        write_config(w / "ftcot-jax" / "run.yaml", "unused", tok, samples, epochs=1, mesh={"data": -1})
    e = {**env(4), **gcs.env, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_TPU_ROOT": str(tmp_path)}
    e["SLURM_JOB_ID"] = str(free_port())  # jax's coordinator port: SLURM_JOB_ID % 4096 + 61440
    p = subprocess.run(["bash", "-c", command], cwd=REPO, env=e, capture_output=True, text=True, timeout=300)
    outs = [(tmp_path / f"worker{i}.out").read_text() for i in range(2)]
    assert p.returncode == 0, p.stderr[-2000:] + outs[0][-3000:] + outs[1][-3000:]
    run_dir = as_path(url)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 2 and results["config"]["mesh"]["fsdp"] == 4, outs[0][-2000:]
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in outs[0]
    assert sorted(losses(run_dir)) == [1, 2]
    assert (run_dir / "checkpoints" / "2" / "commit_success.txt").is_file()


# ----------------------------------------------------------------------------- the teacher cache's objects


def test_cache_on_gcs_one_segment_per_answer_merged_on_close(gcs_dir):
    from tests.helpers.data import teacher_record

    def open_cache():
        return TeacherCache(gcs_dir, task="coin_flip", teacher_model="org/Model-1", temperature=0.7)

    killed = open_cache()  # a writer that never closes: killed
    for s in range(3):
        killed.append(teacher_record(s))
    killed.mark_failed(9, 0, "timeout")
    segs = sorted(p.name for p in killed.record_files())
    assert len(segs) == 3 and all(n.endswith(f"-s{i:06d}.tfrecord") for i, n in enumerate(segs))
    assert open_cache().done_keys() == {(0, 0), (1, 0), (2, 0)}  # each answer durable as soon as append returned

    with open_cache() as w:  # a clean writer: its segments become one object
        w.append(teacher_record(3))
        w.append(teacher_record(4))
        w.append_all([teacher_record(5), teacher_record(6)])
        assert len(w.record_files()) == 6
    reader = open_cache()
    assert len(reader.record_files()) == 4  # 3 segments of the killed writer + 1 merged object
    assert [r.key for r in reader.records()] == [(s, 0) for s in range(7)]
    assert [f["sample_index"] for f in reader.failed()] == [9]
    assert reader.verify() == {"files": 4, "records": 7, "duplicates": 0}
    assert reader.repair() == []  # nothing torn on a store; the killed writer's segments are merged
    assert len(reader.record_files()) == 2 and reader.verify()["records"] == 7
    with reader:
        reader.append(teacher_record(9))
    assert open_cache().failed() == []  # answered later: no longer failed


def test_cache_exports_to_a_bucket_and_imports_back_from_it(tmp_path, gcs_dir, capsys):
    """`ftcot cache export --out gs://...` writes the reference's layout in the bucket; `ftcot cache import` and
    a run's `teacher.import_from` read it from there; the round trip is exact."""
    from ftcot_jax.cli import main
    from ftcot_jax.teacher.compat import task_file
    from tests.helpers.data import teacher_record

    def cache(root):
        return TeacherCache(root, task="coin_flip", teacher_model="org/Model-1", temperature=0.7)

    with cache(tmp_path / "src") as src:
        src.append_all([teacher_record(s, c) for s in range(3) for c in range(2)])
    assert main(["cache", "export", "--cache-dir", str(tmp_path / "src"), "--out", gcs_dir]) == 0
    exported = capsys.readouterr().out.strip().rsplit(" -> ", 1)[1]
    assert exported.startswith(gcs_dir + "/B_") and exported.endswith("/D_coin_flip.json")
    folder = exported.rsplit("/", 1)[0]
    assert task_file(folder, "coin_flip").read_bytes() == as_path(exported).read_bytes()

    assert main(["cache", "import", "--cache-dir", str(tmp_path / "dst"), folder]) == 0
    assert cache(tmp_path / "dst").records() == cache(tmp_path / "src").records()
    assert main(["cache", "import", "--cache-dir", str(tmp_path / "dst"), folder + "-missing"]) == 2
    assert "does not exist" in capsys.readouterr().err
