"""Running `ftcot train` and test workers in subprocesses (kill -9, multi-process): inputs, config, environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ftcot_jax.samples import write_samples
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2
from tests.helpers.toy_tokenizers import char_tokenizer

REPO = Path(__file__).resolve().parents[2]


def make_inputs(root: Path, n_samples: int = 64) -> tuple[Path, Path]:
    """A saved char tokenizer and a sample file (samples.write_samples) under `root`."""
    tok_dir, samples = root / "tokenizer", root / "samples.tfrecord"
    if not tok_dir.exists():
        char_tokenizer().save_pretrained(tok_dir)
    if not samples.exists():
        write_samples(samples, last_letter_samples(n_samples, seed=0))
    return tok_dir, samples


def write_config(path: Path, run_dir: Path, tok_dir: Path, samples: Path, **overrides) -> Path:
    cfg = dict(
        run_dir=str(run_dir),
        student={"from_scratch": True, "model_config": CHAR_GPT2, "tokenizer": str(tok_dir)},
        samples=[str(samples)],
        epochs=4,
        batch_size=8,
        bucket=32,
        eval={"every_epochs": 0},
        log_every_steps=1,
        export=False,
        mesh={"data": 2, "fsdp": 2, "tensor": 2},
    )
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(devices: int = 8, cache_dir: Path | None = None) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])  # ftcot_jax and tests.helpers
    if cache_dir is not None:  # the runs of one test share compiled executables
        e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return e


def train_cmd(config: Path, *extra: str, prelude: str = "") -> list[str]:
    """python -c '<prelude>; ftcot train --config CONFIG ...' (prelude = fault injection for the tests)."""
    code = (
        f"{prelude}\nimport sys\nfrom ftcot_jax.cli import main\n"
        f"sys.exit(main(['train', '--config', {str(config)!r}] + {list(extra)!r}))"
    )
    return [sys.executable, "-c", code]


def run(cmd, env_, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env_, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a step logged twice (redone after a resume) keeps the last value."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if m["kind"] == "train":
            out[m["step"]] = m["loss"]
    return out


# A short pause per step keeps a run going long enough for a (possibly starved) poller to kill it mid-run.
SLOW_STEPS = (
    "import time\nfrom ftcot_jax.train.step import TrainSetup\n_run = TrainSetup.run_step\n"
    "TrainSetup.run_step = lambda self, s, b: (time.sleep(0.1), _run(self, s, b))[1]\n"
)


def kill_after_step(
    config: Path, run_dir, env_, step: int, *, prelude: str = "", timeout: float = 600, poll_s: float = 0.01
) -> int:
    """Starts `ftcot train` on `config` (its steps slowed by SLOW_STEPS), kills it with SIGKILL once its
    metrics.jsonl (local or on a store, read every `poll_s`) shows a train step >= `step`, and returns the
    last step logged."""
    cmd = train_cmd(config, prelude=prelude + SLOW_STEPS)
    proc = subprocess.Popen(cmd, env=env_, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline, killed_at = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
            if steps and steps[-1] >= step:
                proc.send_signal(signal.SIGKILL)
                killed_at = steps[-1]
                break
        time.sleep(poll_s)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    return killed_at


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
