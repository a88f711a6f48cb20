"""`ftcot compare --to-the-end` in miniature: a tiny pretrained GPT-2 (random weights saved as an HF directory, so
both systems load the same ones) fine-tuned for 2 epochs on the pipeline's curated Last Letter samples in ours and
in the PyTorch reference loop, each epoch scored on 4 test questions.

The workers run in this process (seconds); `test_resume_after_a_kill` runs the real command in a subprocess and
kills it (slow). Tolerance of the loss curves: 1e-4 absolute, as test_compare.py's per-step comparison (its
docstring says why).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from ftcot_jax import models  # noqa: E402
from ftcot_jax.compare import end_jax, end_run, end_torch  # noqa: E402
from ftcot_jax.config import load_compare_spec  # noqa: E402
from tests.helpers.models import CHAR_GPT2  # noqa: E402

IN_PROCESS = {"jax": end_jax.run, "torch": end_torch.run}
RECORD_FIELDS = {
    "system",
    "epoch",
    "losses",
    "train_loss",
    "accuracy",
    "n",
    "train_s",
    "eval_s",
    "train_cpu_s",
    "eval_cpu_s",
    "peak_rss_mb",
}


def run_config(tmp: Path, student: Path, epochs: int = 2) -> Path:
    path = tmp / "run.yaml"
    path.write_text(
        f"""run_dir: {tmp / "unused"}
tasks: [last_letter_concatenation]
curate: {{methods: [ft], max_train_questions: 16}}
student: {{model: {student}}}
train:
  epochs: {epochs}
  batch_size: 4
  max_length: 96
  bucket: 16
  dropout: false
  log_every_steps: 1
  async_checkpointing: false
  mesh: {{num_devices: 1}}
eval: {{limit: 4, batch_size: 4, max_new_tokens: 8, zero_shot: false}}
"""
    )
    return path


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, char_tokenizer):
    path = tmp_path_factory.mktemp("student")
    models.save_hf(models.from_config(dict(CHAR_GPT2, pad_token_id=0), seed=3), char_tokenizer, path)
    return path


def spec_for(out: Path, cfg: Path, *more: str):
    return load_compare_spec(
        None, [f"out_dir={out}", "mode=to_the_end", f"end.run_config={cfg}", "end.method=ft", "timeout_s=600", *more]
    )


@pytest.fixture(scope="module")
def done(tmp_path_factory, student_dir):
    tmp = tmp_path_factory.mktemp("end")
    spec = spec_for(tmp / "out", run_config(tmp, student_dir))
    calls = []

    def runner(system, job):
        calls.append((system, job["epoch"]))
        return IN_PROCESS[system](job)

    return end_run.run_end(spec, runner=runner, log=lambda *a: None), tmp / "out", spec, calls


def test_same_loss_curve(done):
    report, out, _, calls = done
    assert calls == [("jax", 0), ("torch", 0), ("jax", 1), ("torch", 1)]  # alternating, per epoch
    ours, theirs = np.array(report["loss_curves"]["jax"]), np.array(report["loss_curves"]["torch"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert ours.shape == theirs.shape == (2 * manifest["steps_per_epoch"],)
    assert ours[-1] < ours[0] - 0.05  # it trains
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_both_systems_write_the_same_fields(done):
    report, out, _, _ = done
    for epoch in (0, 1):
        recs = {s: json.loads((out / s / f"epoch_{epoch:03d}.json").read_text()) for s in ("jax", "torch")}
        for rec in recs.values():
            assert RECORD_FIELDS <= set(rec) and rec["n"] == 4 and rec["epoch"] == epoch
            assert rec["train_s"] > 0 and rec["eval_s"] > 0 and rec["peak_rss_mb"] > 0
            assert rec["train_cpu_s"] > 0 and rec["eval_cpu_s"] > 0
        preds = {s: end_run.predictions_path(out, s, epoch).read_text().splitlines() for s in ("jax", "torch")}
        ours, theirs = (list(map(json.loads, preds[s])) for s in ("jax", "torch"))
        assert len(ours) == len(theirs) == 4
        assert [set(r) for r in ours] == [set(r) for r in theirs]
        assert [r["sample_index"] for r in ours] == [r["sample_index"] for r in theirs]
        a = report["agreement"][epoch]
        assert a["n"] == 4 and 0 <= a["same_completion"] <= a["same_answer"] <= 4
        assert a["ours_correct"] == sum(r["correct"] for r in ours) and a["torch_correct"] == sum(
            r["correct"] for r in theirs
        )
    assert {r["system"] for r in report["rows"]} == {"jax", "torch"} and len(report["rows"]) == 4
    table = (out / "end.md").read_text()
    assert "| 1 | torch |" in table and "same parsed answer on" in table and "wall time torch / ours" in table
    assert report["torch_over_ours"]["train_cpu_s"] > 0 and "CPU seconds torch / ours: train " in table
    assert (out / "accuracy.png").stat().st_size > 1000
    assert json.loads((out / "end.json").read_text())["best"]["jax"]["n"] == 4


def test_rerun_skips_what_is_done(done):
    """A second call with everything recorded runs nothing; with the last epoch's records gone (a kill after
    both systems had trained it) it runs only that epoch, and neither system trains it again."""
    report, out, spec, _ = done
    calls = []

    def runner(system, job):
        calls.append((system, job["epoch"]))
        return IN_PROCESS[system](job)

    end_run.run_end(spec, runner=runner, log=lambda *a: None)
    assert calls == []
    first = {s: (out / s / "epoch_000.json").read_text() for s in ("jax", "torch")}
    before = {s: json.loads((out / s / "epoch_001.json").read_text()) for s in ("jax", "torch")}
    for s in ("jax", "torch"):
        (out / s / "epoch_001.json").unlink()
    end_run.run_end(spec, runner=runner, log=lambda *a: None)
    assert calls == [("jax", 1), ("torch", 1)]
    assert {s: (out / s / "epoch_000.json").read_text() for s in ("jax", "torch")} == first
    after = {s: json.loads((out / s / "epoch_001.json").read_text()) for s in ("jax", "torch")}
    steps = 2 * json.loads((out / "manifest.json").read_text())["steps_per_epoch"]
    # ours: the trainer restored its checkpoint after the epoch, ran no step, and its evaluation is the recorded one
    assert after["jax"]["resumed_from_step"] == steps and after["jax"]["losses"] == []
    assert after["jax"]["accuracy"] == before["jax"]["accuracy"]
    # PyTorch: the epoch's checkpoint holds its losses and time; only the evaluation ran again
    assert after["torch"]["losses"] == before["torch"]["losses"]
    assert after["torch"]["train_s"] == before["torch"]["train_s"]


def test_random_init_student_is_an_error(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "run_dir: x\ntasks: [last_letter_concatenation]\ncurate: {methods: [ft]}\n"
        "student: {model: gpt2, from_scratch: true, model_config: {model_type: gpt2}}\n"
    )
    with pytest.raises(ValueError, match="random init"):
        end_run.run_end(spec_for(tmp_path / "out", cfg), log=lambda *a: None)
    cfg.write_text("run_dir: x\ntasks: [last_letter_concatenation]\ncurate: {methods: [ft]}\nstudent: {model: nope}\n")
    with pytest.raises(ValueError, match="no local weights"):
        end_run.run_end(spec_for(tmp_path / "out2", cfg), log=lambda *a: None)


def test_cli_to_the_end_flags(capsys):
    from ftcot_jax.cli import main

    args = ["compare", "--to-the-end", "--print-config", "--task", "single_eq", "--method", "ft"]
    assert main([*args, "--run-set", "teacher.import_from=/x", "--run-set", "train.epochs=1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["mode"] == "to_the_end" and got["task"] == "gsm8k"  # the per-step keys stay as they were
    assert got["end"] | {"run_config": None} == {
        "run_config": None,
        "task": "single_eq",
        "method": "ft",
        "overrides": ["teacher.import_from=/x", "train.epochs=1"],
        "systems": ["jax", "torch"],
    }


@pytest.mark.slow
def test_resume_after_a_kill(tmp_path, student_dir):
    """The real command, SIGKILLed once ours has recorded epoch 0; the rerun skips that and finishes."""
    cfg = run_config(tmp_path, student_dir)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ftcot_jax", "compare", "--to-the-end", "--run-config", str(cfg), "--method", "ft"]
    cmd += ["--out", str(out), "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "jax" / "epoch_000.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its running worker
    proc.wait()
    assert (out / "jax" / "epoch_000.json").exists()
    assert not (out / "torch" / "epoch_001.json").exists()
    first = (out / "jax" / "epoch_000.json").read_text()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "epoch 0 jax: done before, skipped" in rerun.stdout
    assert (out / "jax" / "epoch_000.json").read_text() == first
    assert all((out / s / "epoch_001.json").exists() for s in ("jax", "torch"))


def test_torch_side_refuses_missing_weights(tmp_path, student_dir):
    """transformers would random-init a weight the directory lacks; the PyTorch side names it instead."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from ftcot_jax.compare.torch_worker import load_hf_model

    shutil.copytree(student_dir, tmp_path / "s")
    path = next((tmp_path / "s").glob("*.safetensors"))
    tensors = load_file(path)
    dropped = sorted(k for k in tensors if k.endswith("mlp.c_fc.weight"))[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, path, metadata={"format": "pt"})
    model, _ = load_hf_model(str(student_dir), "decoder", "cpu")
    assert model.config.model_type == "gpt2"
    with pytest.raises(ValueError, match="random-init 1 weights"):
        load_hf_model(str(tmp_path / "s"), "decoder", "cpu")
