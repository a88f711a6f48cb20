"""scripts/device_check.py's plumbing on CPU (--dry-run): every phase runs in its own subprocess and writes
its JSON, the table prints, a phase past its timeout is recorded as such and the next phase still runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.py"
PHASES = ("smoke", "wheels", "devices", "tests", "compare", "decode")


def run(out: Path, work: Path, *opts: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), str(out), "--dry-run", "--work-dir", str(work), *opts]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def load(out: Path, phase: str) -> dict:
    return json.loads((out / f"{phase}.json").read_text())


def test_dry_run_writes_every_phase_and_the_table(tmp_path):
    pytest.importorskip("torch")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "numpy-0.0.1-py3-none-any.whl").write_bytes(b"")  # installed already: skipped, not installed
    out = tmp_path / "out"
    p = run(out, tmp_path / "work", "--wheels", str(wheels), timeout=480)
    assert p.returncode == 0, p.stdout + p.stderr
    for phase in PHASES:
        rec = load(out, phase)
        assert rec["status"] == "ok", (phase, rec.get("error"), rec.get("log_tail"))
        assert rec["dry_run"] is True and rec["wall_s"] > 0
    assert "phase    status" in p.stdout and all(f"\n{ph} " in p.stdout for ph in PHASES)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["phase"] for r in summary["phases"]] == list(PHASES)
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files
    assert (out / "logs.tar.gz").stat().st_size > 0

    assert load(out, "smoke")["train_step"]["loss"][0] > 0
    w = load(out, "wheels")
    assert w["installed"] == [] and [s["wheel"] for s in w["skipped"]] == ["numpy-0.0.1-py3-none-any.whl"]
    dev = load(out, "devices")
    assert dev["platform"] == "cpu" and dev["matmul"]["bfloat16"]["tflop_s"] > 0
    assert set(dev["cudnn_attention"]) >= {"forward", "backward"}  # on CPU: ok False with the error text
    tests = load(out, "tests")
    assert tests["pytest"]["counts"]["passed"] >= 2 and tests["checkpoint"]["ok"]
    cmp = load(out, "compare")
    assert cmp["skipped"] == {"torch.compile": "dry run on CPU: minutes of C++ compilation"}
    (r,) = cmp["runs"]
    assert r["rc"] == 0 and {row["config"] for row in r["rows"]} == {"ftcot-jax xla fp32", "torch eager fp32"}
    dec = load(out, "decode")
    assert [row["batch"] for row in dec["rows"]] == [1, 2] and "static-compile" in dec["skipped_modes"]
    assert all(set(row["hf_modes"]) == {"eager", "static"} for row in dec["rows"])


def test_a_phase_past_its_timeout_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "out"
    p = run(out, tmp_path / "work", "--phases", "devices,wheels", "--phase-timeout-s", "devices=0.5", timeout=120)
    assert p.returncode == 1  # not every phase ok
    assert load(out, "devices")["status"] == "timed_out"
    assert load(out, "wheels")["status"] == "ok"
    assert "timed_out" in p.stdout and "\nwheels   ok" in p.stdout


def test_unknown_phase_is_an_error(tmp_path):
    p = run(tmp_path / "out", tmp_path / "work", "--phases", "smoke,gpu", timeout=60)
    assert p.returncode == 2 and "unknown phases ['gpu']" in p.stderr
