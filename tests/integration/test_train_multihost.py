"""Two processes joined by jax.distributed on 127.0.0.1 (4 CPU devices each) train the same steps, with
the same losses, as one process with 8 devices (same global mesh, same global batches)."""

from __future__ import annotations

import json
import subprocess

import pytest

from ftcot_jax.paths import as_path
from tests.helpers.train_subprocess import env, free_port, losses, make_inputs, run, train_cmd, write_config

# 16 steps, then greedy evaluation of 4 test questions with the parameters sharded over both processes
COMMON = dict(
    epochs=2,
    mesh={"data": 4, "fsdp": 2, "tensor": 1},
    eval={"every_epochs": 2, "limit": 4, "max_new_tokens": 8, "batch_size": 4},
)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process with 8 devices, on the padded batches (the two processes use the padding-free layout)."""
    root = tmp_path_factory.mktemp("single")
    tok, samples = make_inputs(root)
    run(train_cmd(write_config(root / "single.yaml", root / "run", tok, samples, pack_multiple=0, **COMMON)), env(8))
    return root / "run"


@pytest.mark.parametrize("run_dir_on", ["local", "gcs"])
def test_two_processes_match_one(tmp_path, single, run_dir_on, request):
    """`gcs`: the two processes share a gs:// run directory (docs/multihost.md), on the emulator of conftest."""
    tok, samples = make_inputs(tmp_path)
    ref = losses(single)
    assert sorted(ref) == list(range(1, 17))

    multi = tmp_path / "multi" if run_dir_on == "local" else as_path(request.getfixturevalue("gcs_dir"))
    gcs_env = request.getfixturevalue("gcs").env if run_dir_on == "gcs" else {}
    port = free_port()
    cfg = write_config(tmp_path / "multi.yaml", multi, tok, samples, export=True, pack_multiple=8, **COMMON)
    procs = []
    for pid in range(2):
        cmd = train_cmd(
            cfg,
            "--set",
            "distributed.enabled=true",
            "--set",
            f"distributed.coordinator_address=127.0.0.1:{port}",
            "--set",
            "distributed.num_processes=2",
            "--set",
            f"distributed.process_id={pid}",
        )
        procs.append(
            subprocess.Popen(cmd, env={**env(4), **gcs_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (o, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"stdout:\n{o[-2000:]}\nstderr:\n{e[-3000:]}"
    got = losses(multi)  # written by process 0 only
    computed, padded = _computed_tokens(multi), _computed_tokens(single)
    assert all(computed[s] < padded[s] for s in ref)  # the hosts agreed on packed shapes, every step
    assert sorted(got) == sorted(ref)
    for s in ref:
        assert abs(got[s] - ref[s]) <= 1e-5, (s, got[s], ref[s])
    assert '"steps": 16' in outs[0][0] and '"steps"' not in outs[1][0]  # only process 0 prints/logs
    assert (multi / "export" / "model.safetensors").is_file()
    assert (multi / "checkpoints" / "16").is_dir()
    # evaluation decoded across both processes (outputs gathered to each): the single process's predictions
    assert _predictions(multi) == _predictions(single) and len(_predictions(single)) == 4


def _computed_tokens(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["computed_tokens"] for m in rows if m["kind"] == "train"}


def _predictions(run_dir) -> list[dict]:
    files = sorted((run_dir / "predictions").iterdir())
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]
