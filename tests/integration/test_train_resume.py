"""kill -9 during training and during a checkpoint save, then resume: the following losses equal those
of an uninterrupted run bit for bit, and no half-written checkpoint survives."""

from __future__ import annotations

import signal
import subprocess

import pytest

from ftcot_jax.train.checkpoint import tmp_dirs
from tests.helpers.train_subprocess import env, kill_after_step, losses, make_inputs, run, train_cmd, write_config

EPOCHS = 10  # 64 samples / batch 8 = 8 steps per epoch -> 80 steps; saves every 10 steps and at epoch ends
TOTAL = EPOCHS * 8
COMMON = dict(epochs=EPOCHS, checkpoint_every_steps=10, keep_last=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tok, samples = make_inputs(root)
    e = env(8, root / "jax_cache")
    ref_dir = root / "reference"
    run(train_cmd(write_config(root / "ref.yaml", ref_dir, tok, samples, **COMMON)), e)
    ref = losses(ref_dir)
    assert sorted(ref) == list(range(1, TOTAL + 1))
    return root, tok, samples, e, ref


def test_kill_during_training_then_resume(setup):
    root, tok, samples, e, ref = setup
    run_dir = root / "killed"
    cfg = write_config(root / "killed.yaml", run_dir, tok, samples, **COMMON)
    killed_at = kill_after_step(cfg, run_dir, e, 25)
    assert killed_at < TOTAL, "the run ended before it could be killed"
    before = losses(run_dir)

    out = run(train_cmd(cfg, "--resume"), e)
    assert "resuming from step" in out.stdout + out.stderr
    resumed_from = int((out.stdout + out.stderr).split("resuming from step ")[1].split()[0])
    assert (resumed_from % 10 == 0 or resumed_from % 8 == 0) and 0 < resumed_from <= killed_at
    after = losses(run_dir)
    assert sorted(after) == list(range(1, TOTAL + 1))
    for s in range(1, TOTAL + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])  # bitwise: same program, same data, same state
    assert all(before[s] == ref[s] for s in before)
    assert not tmp_dirs(run_dir / "checkpoints")


KILL_IN_SAVE = """
import os, signal
import orbax.checkpoint as ocp
_save = ocp.CheckpointManager.save
def save(self, step, *a, **k):
    r = _save(self, step, *a, **k)
    if step == 30:  # the async save of step 30 has started writing: die now
        os.kill(os.getpid(), signal.SIGKILL)
    return r
ocp.CheckpointManager.save = save
"""


def test_kill_during_checkpoint_save_then_resume(setup):
    root, tok, samples, e, ref = setup
    run_dir = root / "killed_in_save"
    cfg = write_config(root / "killed_in_save.yaml", run_dir, tok, samples, **COMMON)
    p = subprocess.run(train_cmd(cfg, prelude=KILL_IN_SAVE), env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    ckpt = run_dir / "checkpoints"
    leftovers = tmp_dirs(ckpt)
    assert leftovers and "30" in leftovers[0].name  # killed mid-save: only an uncommitted temp dir of step 30
    assert not (ckpt / "30").exists()

    out = run(train_cmd(cfg), e)  # no --resume: resuming is automatic
    assert "resuming from step 24" in out.stdout + out.stderr  # the newest committed save (epoch 3 end)
    assert not tmp_dirs(ckpt)
    after = losses(run_dir)
    for s in range(1, TOTAL + 1):
        assert after[s] == ref[s], (s, after[s], ref[s])
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert steps[-1] == TOTAL and len(steps) <= 2
