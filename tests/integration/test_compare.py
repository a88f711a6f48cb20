"""`ftcot compare` in miniature: ours and the PyTorch baseline train a tiny GPT-2 on the same batches.

Tolerance of the loss curves (fp32, 6 steps, same initial weights, same batches): both systems do the
same arithmetic in a different order (XLA fusions vs ATen kernels), so each step's loss differs by float32
rounding (~1e-7 relative per op), which Adam does not blow up in a few steps (its update is ~lr * sign(g)
where |g| >> eps). Measured: ~1e-6 here and 3.8e-6 for GPT-2 small (124M, 8 x 256, 3 steps). We allow
1e-4 absolute: 25x the largest gap seen, yet far below what a real difference in the job does (the loss
moves by > 0.05 per step here, and a changed label mask or shift changes the batch hash, which
test_label_shift_error_is_detected shows is sensitive to a one-position shift).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")

from ftcot_jax.compare import common, run  # noqa: E402
from ftcot_jax.compare.prepare import check_model  # noqa: E402
from ftcot_jax.config import CompareSpec, load_compare_spec  # noqa: E402
from tests.helpers.data import last_letter_samples  # noqa: E402
from tests.helpers.models import CHAR_GPT2  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory, char_tokenizer_dir):
    root = tmp_path_factory.mktemp("compare")
    spec = CompareSpec(
        out_dir=str(root / "out"),
        model_config=CHAR_GPT2,
        tokenizer=str(char_tokenizer_dir),
        steps=6,
        warmup_steps=1,
        batch_size=4,
        seq_len=64,
        precisions=("fp32",),
        torch_modes=("eager",),
        repeats=1,
        eval_n=4,  # both systems greedy-decode the same 4 prompts
        eval_batch_size=4,
        max_new_tokens=8,
        threads=1,
        timeout_s=300,
        pack_multiple=16,
    )  # ours on the padding-free layout, torch on the padded batch
    samples = last_letter_samples(40, method="ft_cot")
    examples = [SimpleNamespace(sample_index=x.sample_index, question=x.question, answer=x.answer) for x in samples[:4]]
    return run.run_compare(spec, samples=samples, eval_examples=examples, log=lambda *a: None), root


def test_both_systems_consumed_identical_batches(report):
    rep, root = report
    assert not rep["failed"], rep["failed"]
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    runs = {r["system"]: r for r in rep["runs"]}
    assert set(runs) == {"jax", "torch"}
    res = {s: json.loads((root / "out" / "results" / f"{r['name']}.json").read_text()) for s, r in runs.items()}
    # each side hashed the tensors it actually fed to its model (ours: the device arrays; torch: the kwargs)
    assert len(manifest["batch_hashes"]) == 6 and len(set(manifest["batch_hashes"])) == 6
    assert res["jax"]["batch_hashes"] == manifest["batch_hashes"]
    assert res["torch"]["batch_hashes"] == manifest["batch_hashes"]
    assert all(r["batches_identical"] for r in rep["rows"])
    # ours computed on fewer tokens than the padded 4 x 64 (and compiled each packed shape before timing)
    packed = res["jax"]["packed_tokens"]
    assert len(packed) == 6 and all(n is not None and n < 4 * 64 for n in packed)
    assert res["jax"]["step_shapes"] == len(set(packed))


def test_loss_curves_agree_fp32(report):
    rep, _ = report
    curves = rep["loss_curves"]
    ours, theirs = np.array(curves["ftcot-jax xla fp32"]), np.array(curves["torch eager fp32"])
    assert ours.shape == theirs.shape == (6,)
    assert np.all(np.isfinite(ours))
    assert ours[-1] < ours[0] - 0.05  # it trains (the comparison is not between two constant curves)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    row = next(r for r in rep["rows"] if r["system"] == "torch")
    assert row["max_loss_gap_vs_jax"] < 1e-4


def test_report_files(report):
    rep, root = report
    out = root / "out"
    data = json.loads((out / "compare.json").read_text())
    assert {r["config"] for r in data["rows"]} == {"ftcot-jax xla fp32", "torch eager fp32"}
    for row in data["rows"]:
        assert row["tokens_per_s"] > 0 and row["step_time_s"] > 0 and row["peak_rss_mb"] > 0
        assert 0 < row["mfu"] < 1
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert "ftcot-jax xla fp32" in (out / "compare.md").read_text()
    assert data["headline"]["fp32"]["train_speedup_vs_best_torch"]


def test_both_systems_evaluate(report):
    """Greedy decoding of the prepared prompts on each side, scored by the same evaluator."""
    rep, _ = report
    for r in rep["runs"]:
        assert "eval_error" not in r, r["eval_error"]
        ev = r["eval"]
        assert ev["n"] == 4 and 0 <= ev["accuracy"] <= 1 and len(ev["completions"]) == 3
        assert 0 < ev["generated_tokens"] <= 4 * 8 and ev["decode_tokens_per_s"] > 0
    assert all(row["decode_tokens_per_s"] > 0 for row in rep["rows"])
    assert rep["headline"]["fp32"]["decode_speedup_vs_hf_generate"]


def test_label_shift_error_is_detected():
    """The hash is sensitive to the label convention: a torch-side off-by-one would be caught."""
    from ftcot_jax.compare.torch_worker import to_torch_batch

    rng = np.random.default_rng(0)
    L = 12
    ids = rng.integers(3, 50, (1, 2, L)).astype(np.int32)
    loss_mask = np.zeros((1, 2, L), np.float32)
    loss_mask[0, :, 4:9] = 1
    targets = np.roll(ids, -1, axis=-1)
    b = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "targets": targets,
        "loss_mask": loss_mask,
        "positions": np.broadcast_to(np.arange(L), ids.shape),
    }
    kw = to_torch_batch(b, "decoder", "cpu")
    ours = common.canonical_batch({k: v[0] for k, v in b.items()})
    assert common.hash_arrays({k: v.numpy() for k, v in kw.items()}) == common.hash_arrays(ours)
    labels = kw["labels"].numpy()
    assert (
        (labels[:, 5:10] == ids[0, :, 5:10]).all() and (labels[:, :5] == -100).all() and (labels[:, 10:] == -100).all()
    )
    shifted = dict(ours, labels=np.roll(ours["labels"], 1, axis=-1))
    assert common.hash_arrays(shifted) != common.hash_arrays(ours)


def test_spec_validation():
    with pytest.raises(ValueError, match="precision"):
        CompareSpec(precisions=("fp16",))
    with pytest.raises(ValueError, match="warmup_steps"):
        CompareSpec(steps=2, warmup_steps=2)


def test_worker_env_drops_virtual_devices(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env = run.worker_env(2, "--xla_cpu_use_xnnpack=true")
    assert env["XLA_FLAGS"] == "--xla_cpu_use_xnnpack=true" and env["OMP_NUM_THREADS"] == "2"


def test_spec_loads_like_train_config(tmp_path):
    """Every key through the strict loader (errors name the key), `quick` limits the job."""
    cfg = tmp_path / "compare.yaml"
    cfg.write_text("steps: 9\nprecisions: [bf16]\n")
    spec = load_compare_spec(cfg, ["jax_devices=2", "precisions=[fp32, bf16]"])
    assert (spec.steps, spec.jax_devices, spec.precisions) == (9, 2, ("fp32", "bf16"))
    quick = load_compare_spec(cfg, quick=True)
    assert (
        quick.steps,
        quick.warmup_steps,
        quick.repeats,
        quick.precisions,
        quick.torch_modes,
        quick.eval_n,
        quick.max_new_tokens,
    ) == (4, 1, 1, ("fp32",), ("eager",), 8, 32)
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        load_compare_spec(None, ["modle=gpt2-small"])
    with pytest.raises(ValueError, match="model 'gpt3'"):
        check_model(load_compare_spec(None, ["model=gpt3"]))


def test_cli_flags_map_onto_spec_keys(capsys):
    from ftcot_jax.cli import main

    assert (
        main(
            [
                "compare",
                "--print-config",
                "--out",
                "/tmp/cmp",
                "--precisions",
                "fp32, bf16",
                "--steps",
                "5",
                "--torch-modes",
                "eager",
                "--set",
                "steps=7",
                "--set",
                "timeout_s=60",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)
    assert got["out_dir"] == "/tmp/cmp" and got["precisions"] == ["fp32", "bf16"] and got["torch_modes"] == ["eager"]
    assert got["steps"] == 7 and got["timeout_s"] == 60  # --set wins over the flag
    assert main(["compare", "--print-config", "--quick", "--steps", "12"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4


def test_cli_probe_xla_flags_names_the_script(capsys):
    from ftcot_jax.cli import main

    assert main(["compare", "--probe-xla-flags"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python scripts/probe_xla_flags.py" in err


def test_common_loads_neither_jax_nor_torch():
    """The torch worker's process imports compare.common: it must not bring JAX (or torch) along."""
    import subprocess
    import sys

    code = (
        "import sys, ftcot_jax.compare.common; "
        "print(sorted(m for m in ('jax', 'torch', 'flax', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mfu_above_the_measured_peak_is_not_printed():
    """A step whose model FLOP rate beats the measured peak gets 'peak unreliable', never an MFU > 100%."""
    from ftcot_jax.compare.summary import summarize

    spec = CompareSpec(steps=2, warmup_steps=0, precisions=("fp32",), torch_modes=("eager",), repeats=1)
    manifest = {"model": "m", "flops_per_token": 1e6, "batch_hashes": ["a", "b"], "batch_size": 1, "seq_len": 4}
    base = {"precision": "fp32", "repeat": 0, "losses": [2.0, 1.0], "batch_hashes": ["a", "b"], "step_time_s": 1.0}
    base |= {"compile_s": 0.0, "train_peak_rss_mb": 10.0, "base_rss_mb": 1.0, "real_tokens_per_s": 1.0}
    runs = [
        dict(base, name="j", system="jax", mode="xla", tokens_per_s=1200.0, matmul_flops=1e9),  # 1.2e9 > peak
        dict(base, name="t", system="torch", mode="eager", tokens_per_s=500.0, matmul_flops=0.9e9),
    ]
    rep = summarize(spec, manifest, runs)
    rows = {r["system"]: r for r in rep["rows"]}
    assert rep["peak_flops"]["fp32"] == 1e9  # the higher of the two frameworks' measurements
    assert rows["jax"]["mfu"] is None and rows["torch"]["mfu"] == pytest.approx(0.5)
    table = rep["table"].splitlines()
    assert "peak unreliable" in table[2] and "50.0%" in table[3]


def test_peak_shapes_are_the_models():
    shapes = common.matmul_shapes(CHAR_GPT2 | {"n_embd": 32}, rows=256)
    assert (256, 32, 96) in shapes and (256, 32, 32) in shapes and (256, 128, 32) in shapes
    assert all(m == 256 for m, _, _ in shapes)
    assert max(max(s) for s in common.matmul_shapes({"hidden_size": 4096, "vocab_size": 128000}, 10**5)) == 8192
