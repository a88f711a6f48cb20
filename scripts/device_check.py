"""One prepared accelerator run (issue 16 item 5): each phase in its own subprocess with its own timeout.

    python scripts/device_check.py OUT_DIR                     # on the accelerator: at most --budget-s (480 s)
    python scripts/device_check.py OUT_DIR --dry-run           # on CPU, tiny shapes: tests the plumbing
    python scripts/device_check.py OUT_DIR --phases devices,decode --phase-timeout-s decode=200

Phases, in order (docs/gpu.md says what each measures):
  smoke    import ftcot_jax, one tiny train step, one tiny decode; if it fails the script stops
  wheels   pip install --no-deps the wheels in --wheels (default shared/wheels or .whl), skipping installed ones
  devices  devices, versions, JAX's memory limit, cuDNN attention forward/backward, bf16/fp32 matmul TFLOP/s
  tests    the GPU-meaningful tests (torch parity, cached == recomputed decode, the 1-device train step) via
           pytest with FTCOT_TEST_PLATFORM=auto, then a checkpoint save/restore on a 1-device mesh
  compare  `ftcot compare`: GPT-2 small at 8 x 256 and 32 x 1024 (bf16 first, then fp32; torch eager and
           torch.compile), then GPT-2 medium and large at 32 x 1024 (bf16, compile) while the budget lasts
  decode   scripts/bench_decode.py on a random-init SmolLM2-135M shape, bf16, batch 1/8/32, 256 new tokens,
           against HF generate eager and static cache + compile

Each phase writes OUT_DIR/<phase>.json as it goes (status "running" with what it has so far) and the parent
sets its final status: ok, failed, timed_out or skipped. At the end: OUT_DIR/summary.json, OUT_DIR/logs.tar.gz
(every phase's log; the compare and bench working files stay in --work-dir) and a table on stdout. At most 8
files land in OUT_DIR, as the device tool returns no more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("smoke", "wheels", "devices", "tests", "compare", "decode")
# Default timeouts in seconds (they sum to the default --budget-s of 480).
TIMEOUTS = {"smoke": 45, "wheels": 20, "devices": 40, "tests": 90, "compare": 190, "decode": 95}
GRACE_S = 10  # a phase gets this long past its deadline to write what it has before it is killed

# The tests that mean something on a GPU (each runs on one device; the multi-device ones need 8 CPU devices).
GPU_TESTS = [
    "tests/unit/test_model_families.py::test_family_logits_match_transformers_on_its_tiny_config[gpt2]",
    "tests/unit/test_gpt2.py::test_bf16_compute_keeps_fp32_params_and_logits",
    "tests/unit/test_llama.py::test_logits_match_torch_on_left_padded_batch",
    "tests/unit/test_t5.py::test_logits_match_hf_on_padded_batch",
    "tests/unit/test_t5.py::test_cached_decoding_equals_full_recomputation",
    "tests/unit/test_decode.py::test_greedy_matches_hf_generate_left_padded",
    "tests/unit/test_decode.py::test_cached_decoding_equals_full_recomputation",
    "tests/unit/test_decode_chunks.py::test_fixed_chunks_give_the_while_loops_tokens",
    "tests/unit/test_step.py::test_loss_counts_exactly_the_label_tokens",
    "tests/unit/test_step.py::test_grad_accumulation_equals_one_big_batch",
    "tests/unit/test_step.py::test_bf16_compute_keeps_fp32_params_and_close_loss",
]
DRY_TESTS = [  # one of each kind, so that the dry run stays short on 2 CPU cores
    "tests/unit/test_model_families.py::test_family_logits_match_transformers_on_its_tiny_config[gpt2]",
    "tests/unit/test_decode.py::test_cached_decoding_equals_full_recomputation",
]

GPT2_SHAPES = {  # n_embd, n_layer, n_head
    "gpt2-small": (768, 12, 12),
    "gpt2-medium": (1024, 24, 16),
    "gpt2-large": (1280, 36, 20),
}


class Phase:
    """What a phase child has: the options, its deadline, and `update` to write OUT_DIR/<phase>.json."""

    def __init__(self, name: str, args, deadline: float):
        self.name, self.args, self.deadline = name, args, deadline
        self.out = Path(args.out_dir)
        self.work = Path(args.work_dir) / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.record: dict = {"phase": name, "status": "running", "dry_run": args.dry_run}

    def left(self) -> float:
        return self.deadline - time.time()

    def update(self, **kv) -> None:
        self.record.update(kv)
        write_json(self.out / f"{self.name}.json", self.record)

    def run(self, cmd: list[str], *, env: dict | None = None, log_name: str, margin: float = 3.0) -> dict:
        """A subprocess (its own process group) until it ends or the phase's deadline less `margin`."""
        timeout = max(self.left() - margin, 1.0)
        log = self.work / f"{log_name}.log"
        t = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                rc = "timeout"
        return {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t, 2), "log_tail": tail(log)}


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (a child this script started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def gpu_env(**extra) -> dict:
    """The environment for GPU subprocesses: JAX picks its platform (JAX_PLATFORMS unset unless --dry-run)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


# --------------------------------------------------------------------------------------------------- phases


def phase_smoke(ph: Phase) -> None:
    """Import, one tiny train step (train.step.setup on a tiny random GPT-2), one tiny decode."""
    import dataclasses

    import jax
    import numpy as np

    import ftcot_jax
    from ftcot_jax import decode, models
    from ftcot_jax.train import batches
    from tests.helpers.data import last_letter_samples
    from tests.helpers.models import CHAR_GPT2
    from tests.helpers.toy_tokenizers import char_tokenizer
    from tests.helpers.train_step import step_config

    ph.update(ftcot_jax=getattr(ftcot_jax, "__version__", None), platform=jax.devices()[0].platform)
    tok = char_tokenizer()
    samples = [
        s if i % 2 else dataclasses.replace(s, rationale=s.rationale[:4])
        for i, s in enumerate(last_letter_samples(8, seed=1, method="ft_cot"))
    ]
    encoded = batches.encode_samples(samples, tok, model_type="decoder", max_length=128)
    t = time.perf_counter()
    from ftcot_jax.train.step import setup

    st = setup(step_config((1, 1, 1)), tokenizer=tok)
    state = st.init_state()
    b = batches.Batcher(encoded, 8, 1, seed=0, bucket=16, pad_id=0)
    state, m = st.run_step(state, b.batch(0, 0))
    loss = float(jax.device_get(m["loss"]))
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    state, m = st.run_step(state, b.batch(1, 0))
    loss2 = float(jax.device_get(m["loss"]))
    if not (np.isfinite(loss) and np.isfinite(loss2)):
        raise RuntimeError(f"train step loss is not finite: {loss}, {loss2}")
    ph.update(train_step={"loss": [loss, loss2], "first_step_s": first_s, "second_step_s": time.perf_counter() - t})
    model = models.from_config(CHAR_GPT2, seed=0)
    t = time.perf_counter()
    (gen,) = decode.generate(model, tok, ["Q: abc\nA:"], max_new_tokens=8, batch_size=1)
    ph.update(decode={"tokens": len(gen.token_ids), "finish_reason": gen.finish_reason, "s": time.perf_counter() - t})


def phase_wheels(ph: Phase) -> None:
    """pip install --no-deps every wheel of --wheels whose distribution is not installed yet."""
    from importlib import metadata

    folder = (
        Path(ph.args.wheels)
        if ph.args.wheels
        else next((p for p in (ROOT / "shared" / "wheels", ROOT / ".whl") if p.is_dir()), None)
    )
    if folder is None or not folder.is_dir():
        ph.update(folder=str(folder) if folder else None, installed=[], skipped=[], note="no wheels folder")
        return
    todo, skipped = [], []
    for whl in sorted(folder.glob("*.whl")):
        dist, version = whl.name.split("-")[:2]
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            todo.append(whl)
        else:
            skipped.append({"wheel": whl.name, "installed": have, "carried": version})
    ph.update(folder=str(folder), skipped=skipped, to_install=[w.name for w in todo])
    if todo:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        r = ph.run([*cmd, *map(str, todo)], log_name="pip")
        ph.update(pip=r)
        if r["rc"] != 0:
            raise RuntimeError(f"pip install failed (exit {r['rc']})")
    ph.update(installed=[w.name for w in todo])


def _time(f, *a, repeats: int) -> float:
    """Median seconds of `f(*a)` after one warm-up call, each blocked until ready."""
    import statistics

    import jax

    jax.block_until_ready(f(*a))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*a))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def phase_devices(ph: Phase) -> None:
    """Devices, versions, memory limit, cuDNN attention forward/backward, matmul rates."""
    from importlib import metadata

    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    plugins = {d.metadata["Name"]: d.version for d in metadata.distributions() if "jax" in d.metadata["Name"]}
    stats = dev.memory_stats() or {}
    env_keys = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
    ph.update(
        devices=[str(d) for d in jax.devices()],
        platform=dev.platform,
        device_kind=dev.device_kind,
        jax=jax.__version__,
        jax_packages=plugins,
        memory_limit_gb=stats.get("bytes_limit", 0) / 2**30 or None,
        memory_stats=stats,
        env={k: os.environ.get(k) for k in (*env_keys, "XLA_FLAGS", "JAX_PLATFORMS")},
        default_matmul_precision=jax.config.jax_default_matmul_precision,
    )
    # cuDNN attention, bf16, causal, forward and backward, against the XLA form.
    B, T, N, H = (2, 128, 4, 64) if not ph.args.dry_run else (1, 16, 2, 16)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (B, T, N, H), jnp.bfloat16) for kk in keys)

    def loss(impl):
        return lambda q, k, v: (
            jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl).astype(jnp.float32).sum()
        )

    cudnn = {"shape_BTNH": [B, T, N, H], "dtype": "bfloat16"}
    for name, fn in (
        ("forward", lambda impl: jax.jit(loss(impl))),
        ("backward", lambda impl: jax.jit(jax.grad(loss(impl)))),
    ):
        try:
            got = jax.device_get(fn("cudnn")(q, k, v))
            want = jax.device_get(fn("xla")(q, k, v))
            cudnn[name] = {
                "ok": True,
                "max_abs_diff_vs_xla": float(
                    jnp.max(jnp.abs(jnp.asarray(got, jnp.float32) - jnp.asarray(want, jnp.float32)))
                ),
            }
        except Exception as e:  # noqa: BLE001 - the error text is the result
            cudnn[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
    ph.update(cudnn_attention=cudnn)
    # Matmul rates on random data (zeros and ones run faster than real data).
    n = 8192 if not ph.args.dry_run else 256
    rates = {}
    for dtype in (jnp.bfloat16, jnp.float32):
        a, b = (jax.random.normal(kk, (n, n), dtype) for kk in jax.random.split(jax.random.key(1), 2))
        s = _time(jax.jit(jnp.matmul), a, b, repeats=10)
        rates[jnp.dtype(dtype).name] = {"n": n, "median_s": s, "tflop_s": 2 * n**3 / s / 1e12}
    ph.update(matmul=rates)


def _junit(path: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return []
    out = []
    for case in ET.parse(path).iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome = kind
                out_msg = (el.get("message") or "")[:300]
                break
        else:
            out_msg = ""
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        out.append({"test": name, "outcome": outcome, "time_s": float(case.get("time", 0)), "message": out_msg})
    return out


def phase_tests(ph: Phase) -> None:
    """pytest on the GPU (FTCOT_TEST_PLATFORM=auto), then a checkpoint round trip on a 1-device mesh."""
    tests = DRY_TESTS if ph.args.dry_run else GPU_TESTS
    junit = ph.work / "junit.xml"
    env = gpu_env(FTCOT_TEST_PLATFORM="cpu" if ph.args.dry_run else "auto")
    if not ph.args.dry_run:
        env.pop("JAX_PLATFORMS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests]
    r = ph.run(cmd, env=env, log_name="pytest", margin=15.0)
    results = _junit(junit)
    counts = {k: sum(x["outcome"] == k for x in results) for k in ("passed", "failure", "error", "skipped")}
    ph.update(
        pytest={
            **r,
            "counts": counts,
            "results": results,
            "platform_env": "FTCOT_TEST_PLATFORM=" + env["FTCOT_TEST_PLATFORM"],
        }
    )
    ph.update(checkpoint=_checkpoint_round_trip(ph.work / "ckpt"))
    if r["rc"] != 0 or not ph.record["checkpoint"]["ok"]:
        raise RuntimeError(f"pytest exit {r['rc']}, {counts}; checkpoint ok={ph.record['checkpoint']['ok']}")


def _checkpoint_round_trip(path: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ftcot_jax.models.sharding import make_mesh
    from ftcot_jax.train.checkpoint import Checkpoints, abstract_like

    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    try:
        mesh = make_mesh(1, 1, 1)
        w = jax.device_put(jax.random.normal(jax.random.key(0), (64, 64)), NamedSharding(mesh, P("fsdp", "tensor")))
        state = {"params": {"w": w}, "step": jnp.int32(7)}
        ck = Checkpoints(path, keep_last=2, keep_best=0)
        ck.save(5, state, {"epoch": 1})
        ck.wait()
        restored, data = ck.restore(5, abstract_like(state, jax.tree.map(lambda x: x.sharding, state)))
        ck.close()
        same = bool(np.array_equal(np.asarray(restored["params"]["w"]), np.asarray(w)))
        ok = same and data == {"epoch": 1} and int(restored["step"]) == 7
        return {"ok": ok, "platform": w.devices().pop().platform, "s": time.perf_counter() - t}
    except Exception as e:  # noqa: BLE001 - the error text is the result
        return {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}


def _compare_runs(dry: bool) -> list[dict]:
    """The `ftcot compare` runs, most important first (each one `ftcot compare` process)."""
    if dry:  # a tiny GPT-2, the char tokenizer; torch.compile skipped (minutes of C++ compilation on a CPU)
        tiny = dict(model_type="gpt2", vocab_size=80, n_positions=256, n_embd=32, n_layer=1, n_head=4)
        # last-letter answers (method ft) are short enough for one token per character at 128
        task = ["task=last_letter_concatenation", "method=ft"]
        return [{"name": "tiny-4x128-fp32", "model": tiny, "batch": 4, "seq": 128, "precisions": "fp32", "task": task}]
    runs = []
    for b, s in ((8, 256), (32, 1024)):
        for p in ("bf16", "fp32"):
            runs.append({"name": f"small-{b}x{s}-{p}", "model": "gpt2-small", "batch": b, "seq": s, "precisions": p})
    for m in ("gpt2-medium", "gpt2-large"):
        runs.append({"name": f"{m[5:]}-32x1024-bf16", "model": m, "batch": 32, "seq": 1024, "precisions": "bf16"})
    return runs


def _compare_settings(run: dict, args) -> list[str]:
    model = run["model"]
    if isinstance(model, str) and model != "gpt2-small":
        d, n_layer, n_head = GPT2_SHAPES[model]
        model = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=d, n_layer=n_layer, n_head=n_head)
    sets = [
        f"batch_size={run['batch']}",
        f"seq_len={run['seq']}",
        f"precisions=[{run['precisions']}]",
        f"torch_modes=[{'eager' if args.dry_run else 'eager,compile'}]",
        "repeats=1",
        "eval_n=0",
        f"steps={2 if args.dry_run else 10}",
        f"warmup_steps={1 if args.dry_run else 3}",
    ]
    sets += run.get("task", [])
    sets.append(f"model_config={json.dumps(model)}" if isinstance(model, dict) else f"model={model}")
    if args.tokenizer:
        sets.append(f"tokenizer={args.tokenizer}")
    return sets


def _compare_rows(report: dict) -> list[dict]:
    keys = ("config", "tokens_per_s", "mfu", "step_time_s", "compile_s", "final_loss", "batches_identical")
    return [{k: r.get(k) for k in keys} for r in report.get("rows", [])]


def phase_compare(ph: Phase) -> None:
    """`ftcot compare` runs, each recorded (its compare.json in full) as soon as it ends."""
    if ph.args.dry_run and not ph.args.tokenizer:
        from tests.helpers.toy_tokenizers import char_tokenizer

        ph.args.tokenizer = str(ph.work / "char_tokenizer")
        char_tokenizer().save_pretrained(ph.args.tokenizer)
    # Both systems' processes share the GPU: JAX allocates on demand, not 75% up front.
    env = gpu_env(XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
    if ph.args.dry_run:
        ph.update(skipped={"torch.compile": "dry run on CPU: minutes of C++ compilation"})
    done, not_run = [], []
    min_left = 20 if ph.args.dry_run else 60  # don't start a run with less than this left
    for run in _compare_runs(ph.args.dry_run):
        if ph.left() < min_left:
            not_run.append(run["name"])
            continue
        out = ph.work / run["name"]
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "ftcot_jax", "compare", "--out", str(out)]
        for s in _compare_settings(run, ph.args):
            cmd += ["--set", s]
        r = ph.run(cmd, env=env, log_name=run["name"])
        report = json.loads((out / "compare.json").read_text()) if (out / "compare.json").exists() else {}
        done.append(
            {
                "name": run["name"],
                **r,
                "rows": _compare_rows(report),
                "headline": report.get("headline"),
                "compare_json": report,
            }
        )
        ph.update(runs=done, not_run=not_run, env_preallocate=env["XLA_PYTHON_CLIENT_PREALLOCATE"])
    ph.update(runs=done, not_run=not_run)
    if failed := [d["name"] for d in done if d["rc"] != 0]:
        raise RuntimeError(f"compare runs failed: {failed}")


def phase_decode(ph: Phase) -> None:
    """scripts/bench_decode.py on a random-init SmolLM2-135M shape (a tiny llama in --dry-run)."""
    out = ph.work / "bench_decode.json"
    out.unlink(missing_ok=True)
    if ph.args.dry_run:
        tiny = dict(
            model_type="llama", vocab_size=223, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
        # static-compile skipped: torch.compile on a CPU costs minutes of C++ compilation
        opts = ["--random-init", json.dumps(tiny), "--batch-sizes", "1,2", "--new-tokens", "8", "--repeats", "1"]
        opts += ["--dtype", "fp32", "--hf-modes", "eager,static", "--torch-threads", "1"]
        ph.update(skipped_modes={"static-compile": "dry run on CPU"})
    else:
        opts = ["--random-init", "smollm2-135m", "--batch-sizes", "1,8,32", "--new-tokens", "256", "--repeats", "2"]
        opts += ["--dtype", "bf16", "--hf-modes", "eager,static-compile"]
    env = gpu_env(XLA_PYTHON_CLIENT_PREALLOCATE=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"))
    r = ph.run([sys.executable, "scripts/bench_decode.py", *opts, "--out", str(out)], env=env, log_name="bench_decode")
    res = json.loads(out.read_text()) if out.exists() else {}
    ph.update(bench=r, meta=res.get("meta"), rows=res.get("rows", []))
    if r["rc"] != 0:
        raise RuntimeError(f"bench_decode exit {r['rc']} after {len(ph.record['rows'])} batch sizes")


PHASE_FUNCS = {name: globals()[f"phase_{name}"] for name in PHASES}


# --------------------------------------------------------------------------------------------- the driver


def child(args) -> int:
    """Run one phase in this process (the parent gave it a deadline)."""
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(ROOT))
    ph = Phase(args.run_phase, args, args.deadline)
    t = time.perf_counter()
    try:
        PHASE_FUNCS[args.run_phase](ph)
    except Exception as e:  # noqa: BLE001 - recorded, and the exit status says it
        import traceback

        traceback.print_exc()
        ph.update(status="failed", error=f"{type(e).__name__}: {str(e)[:1000]}", phase_s=time.perf_counter() - t)
        return 1
    ph.update(status="ok", phase_s=time.perf_counter() - t)
    return 0


def run_phase(name: str, args, timeout: float, logs: Path) -> dict:
    """The phase in a subprocess; its record with the final status (timed_out when it ran past `timeout`)."""
    out = Path(args.out_dir) / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, args.out_dir, "--run-phase", name, "--deadline", str(time.time() + timeout)]
    cmd += ["--work-dir", args.work_dir] + (["--dry-run"] if args.dry_run else [])
    cmd += ["--wheels", args.wheels] if args.wheels else []
    cmd += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    log = logs / f"{name}.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=gpu_env()
        )
        try:
            rc = proc.wait(timeout=timeout + GRACE_S)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
    wall = time.perf_counter() - t
    try:
        rec = json.loads(out.read_text())
    except (OSError, ValueError):
        rec = {"phase": name}
    if rc is None or wall > timeout:  # killed, or ended in the grace period: past its timeout either way
        rec["status"] = "timed_out"
    elif rc != 0 and rec.get("status") != "failed":
        rec["status"] = "failed"
        rec.setdefault("error", f"exit {rc}")
    rec.update(phase=name, exit=rc, wall_s=round(wall, 2), timeout_s=timeout, log_tail=tail(log, 25))
    write_json(out, rec)
    return rec


def headline(rec: dict) -> str:
    """One line of what a phase found, for the table."""
    name, s = rec["phase"], rec.get("status")
    if s == "skipped":
        return rec.get("reason", "")
    if rec.get("error") and s != "ok":
        return rec["error"][:90]
    if name == "smoke" and "train_step" in rec:
        return f"loss {rec['train_step']['loss'][0]:.3f}, {rec.get('decode', {}).get('tokens', '?')} tokens decoded"
    if name == "wheels":
        where = rec.get("note", rec.get("folder"))
        return f"installed {len(rec.get('installed', []))}, skipped {len(rec.get('skipped', []))} ({where})"
    if name == "devices" and "platform" in rec:
        mm = rec.get("matmul", {}).get("bfloat16", {})
        att = rec.get("cudnn_attention", {})
        cud = "/".join("ok" if att.get(k, {}).get("ok") else "no" for k in ("forward", "backward"))
        mem = rec.get("memory_limit_gb") or 0
        return f"{rec['device_kind']}, mem {mem:.1f} GiB, cudnn fwd/bwd {cud}, bf16 {mm.get('tflop_s', 0):.1f} TFLOP/s"
    if name == "tests" and "pytest" in rec:
        c = rec["pytest"]["counts"]
        ck = rec.get("checkpoint", {}).get("ok")
        return f"{c['passed']} passed, {c['failure'] + c['error']} failed, {c['skipped']} skipped; checkpoint ok={ck}"
    if name == "compare":
        return f"{len(rec.get('runs', []))} runs, not run: {', '.join(rec.get('not_run', [])) or '-'}"
    if name == "decode":
        rows = rec.get("rows", [])
        return (
            "; ".join(
                f"B={r['batch']} {r['ours']['tokens_per_s']:.0f} tok/s"
                + "".join(f", x{m['speedup']:.2f} vs {k}" for k, m in r.get("hf_modes", {}).items())
                for r in rows
            )
            or "no rows"
        )
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--dry-run", action="store_true", help="on CPU, tiny shapes (tests the plumbing)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole run's wall-clock budget")
    ap.add_argument(
        "--phase-timeout-s", action="append", default=[], metavar="PHASE=S", help="override a phase's timeout"
    )
    ap.add_argument("--wheels", help="folder of wheels for the wheels phase (default shared/wheels or .whl)")
    ap.add_argument("--tokenizer", help="tokenizer dir for compare (default: the SmolLM2 GGUF's, not on the GPU box)")
    ap.add_argument("--work-dir", help="compare/bench working files and logs (default /tmp/ftcot_device_check)")
    ap.add_argument("--run-phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out_dir = str(Path(args.out_dir).resolve())
    args.work_dir = str(Path(args.work_dir or "/tmp/ftcot_device_check").resolve())
    if args.tokenizer:
        args.tokenizer = str(Path(args.tokenizer).resolve())
    if args.run_phase:
        return child(args)

    phases = [p for p in args.phases.split(",") if p]
    if bad := [p for p in phases if p not in PHASES]:
        ap.error(f"unknown phases {bad}; expected {', '.join(PHASES)}")
    timeouts = dict(TIMEOUTS)
    for item in args.phase_timeout_s:
        k, _, v = item.partition("=")
        if k not in PHASES:
            ap.error(f"--phase-timeout-s {item}: unknown phase {k!r}")
        timeouts[k] = float(v)
    out, work = Path(args.out_dir), Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(parents=True)

    start = time.time()
    records, stop = [], None
    for name in phases:
        left = args.budget_s - (time.time() - start)
        if stop or left < GRACE_S + 5:
            rec = {"phase": name, "status": "skipped", "reason": stop or f"budget spent ({left:.0f}s left)"}
            write_json(out / f"{name}.json", rec)
        else:
            print(
                f"[{time.time() - start:6.1f}s] {name} (timeout {min(timeouts[name], left - GRACE_S):.0f}s) ...",
                flush=True,
            )
            rec = run_phase(name, args, min(timeouts[name], left - GRACE_S), logs)
            if name == "smoke" and rec["status"] != "ok":
                stop = f"smoke {rec['status']}"
        records.append(rec)
        print(f"[{time.time() - start:6.1f}s] {name}: {rec['status']}  {headline(rec)}", flush=True)

    total = time.time() - start
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(
            work, arcname="device_check", filter=lambda ti: None if ti.name.endswith((".npz", ".safetensors")) else ti
        )
    rows = [
        {"phase": r["phase"], "status": r["status"], "wall_s": r.get("wall_s"), "summary": headline(r)} for r in records
    ]
    write_json(
        out / "summary.json", {"dry_run": args.dry_run, "total_s": total, "budget_s": args.budget_s, "phases": rows}
    )
    print(f"\n{'phase':<8} {'status':<10} {'wall s':>7}  summary")
    for r in rows:
        print(f"{r['phase']:<8} {r['status']:<10} {r['wall_s'] or 0:>7.1f}  {r['summary']}")
    print(f"total {total:.1f}s of {args.budget_s:.0f}s budget; JSON under {out}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
