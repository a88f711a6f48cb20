"""Decoding with parameters sharded over a mesh that spans two jax.distributed processes (4 CPU devices
each), as per-epoch evaluation does in a multi-host run: both processes get what one process with 8
devices gets (greedy, stop strings, per-prompt budgets, sampling with a key)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.train_subprocess import REPO, env, free_port

WORKER = "tests.helpers.multihost_decode_worker"


def _worker(pid: int, n: int, port: int, out: Path, devices: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", WORKER, str(pid), str(n), str(port), str(out)],
        env=env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_two_processes_decode_like_one(tmp_path):
    single = _worker(0, 1, 0, tmp_path / "single.json", 8)
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]
    port = free_port()
    procs = [_worker(pid, 2, port, tmp_path / f"multi{pid}.json", 4) for pid in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, e[-3000:]
    want = json.loads((tmp_path / "single.json").read_text())
    for pid in range(2):
        assert json.loads((tmp_path / f"multi{pid}.json").read_text()) == want, pid
    gens = want["gpt2"]["gens"]  # the run exercised the early-stop path: a row ended at its stop string
    assert gens[0][2] == "stop" and [len(g[1]) for g in gens[1:]] == [5, 12]
