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

import numpy as np
import pytest

from train_helpers import char_tokenizer, last_letter_samples, tiny_gpt2_config

pytest.importorskip("torch")

from ftcot_jax import compare  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    tok = char_tokenizer()
    tok.save_pretrained(str(root / "tok"))
    spec = compare.CompareSpec(out_dir=str(root / "out"), model_config=tiny_gpt2_config(), tokenizer=str(root / "tok"),
                               steps=6, warmup_steps=1, batch_size=4, seq_len=64, precisions=("fp32",),
                               torch_modes=("eager",), repeats=1, eval_n=0, threads=1, timeout_s=300,
                               pack_multiple=16)  # ours on the padding-free layout, torch on the padded batch
    return compare.run_compare(spec, samples=last_letter_samples(40, method="ft_cot"), log=lambda *a: None), root


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


def test_label_shift_error_is_detected():
    """The hash is sensitive to the label convention: a torch-side off-by-one would be caught."""
    from ftcot_jax.torch_baseline import to_torch_batch

    rng = np.random.default_rng(0)
    L = 12
    ids = rng.integers(3, 50, (1, 2, L)).astype(np.int32)
    loss_mask = np.zeros((1, 2, L), np.float32)
    loss_mask[0, :, 4:9] = 1
    targets = np.roll(ids, -1, axis=-1)
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids), "targets": targets, "loss_mask": loss_mask,
         "positions": np.broadcast_to(np.arange(L), ids.shape)}
    kw = to_torch_batch(b, "decoder", "cpu")
    ours = compare.canonical_batch({k: v[0] for k, v in b.items()})
    assert compare.hash_arrays({k: v.numpy() for k, v in kw.items()}) == compare.hash_arrays(ours)
    labels = kw["labels"].numpy()
    assert (labels[:, 5:10] == ids[0, :, 5:10]).all() and (labels[:, :5] == -100).all() and (labels[:, 10:] == -100).all()
    shifted = dict(ours, labels=np.roll(ours["labels"], 1, axis=-1))
    assert compare.hash_arrays(shifted) != compare.hash_arrays(ours)


def test_spec_validation():
    with pytest.raises(ValueError, match="precision"):
        compare.CompareSpec(precisions=("fp16",))
    with pytest.raises(ValueError, match="warmup_steps"):
        compare.CompareSpec(steps=2, warmup_steps=2)


def test_worker_env_drops_virtual_devices(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env = compare.worker_env(2, "--xla_cpu_use_xnnpack=true")
    assert env["XLA_FLAGS"] == "--xla_cpu_use_xnnpack=true" and env["OMP_NUM_THREADS"] == "2"
