"""The benchmark scripts run end to end on tiny settings and write what their tables print."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_train_side_by_side_with_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    bench = load("bench_train")
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--layers",
                "1",
                "--batch",
                "1",
                "--length",
                "16",
                "--steps",
                "1",
                "--precisions",
                "fp32",
                "--baselines",
                "torch",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    ours, (torch_row,) = res["results"][0], res["baselines"]
    assert ours["tokens_per_s"] > 0 and torch_row["system"] == "torch eager"
    assert torch_row["tokens_per_s"] == pytest.approx(16 / torch_row["step_s_median"])
    assert torch_row["ours_over_it"] == pytest.approx(ours["tokens_per_s"] / torch_row["tokens_per_s"])
    assert "torch eager fp32" in capsys.readouterr().out


def test_bench_train_rejects_unknown_baselines_and_a_missing_hf_flax_python():
    bench = load("bench_train")
    with pytest.raises(SystemExit, match="unknown baseline 'jax'"):
        bench.main(["--baselines", "jax"])
    with pytest.raises(SystemExit, match="--hf-flax-python"):
        bench.main(["--baselines", "hf-flax"])


def test_decode_matmul_floor_reads_every_kernel_and_the_head():
    from ftcot_jax import models
    from tests.helpers.models import TINY_LLAMA

    model = models.from_config(TINY_LLAMA, seed=0)
    floor = load("bench_decode").matmul_floor(model, batch=2, repeats=2)
    c = model.config
    kernels = c.num_hidden_layers * (
        c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
        + c.num_attention_heads * c.head_dim * c.hidden_size
        + 3 * c.hidden_size * c.intermediate_size
    )
    n_bytes = 4 * (kernels + c.vocab_size * c.hidden_size)
    assert floor["tokens_per_s"] == pytest.approx(2 / floor["step_s"])
    assert floor["weight_gb_per_s"] == pytest.approx(n_bytes / floor["step_s"] / 1e9)


def test_bench_train_on_gsm8k_batches_feeds_torch_the_same_batches(tmp_path, capsys):
    pytest.importorskip("torch")
    bench = load("bench_train")
    out = tmp_path / "bench.json"
    assert (
        bench.main(
            [
                "--layers",
                "1",
                "--batch",
                "2",
                "--length",
                "128",
                "--steps",
                "1",
                "--precisions",
                "fp32",
                "--data",
                "gsm8k",
                "--baselines",
                "torch",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    real = res["meta"]["real_tokens_per_batch"]
    assert res["meta"]["data"] == "gsm8k" and len(real) == 2 and all(0 < n < 2 * 128 for n in real)
    written = bench._read_batches(str(tmp_path / "bench.batches.npz"))
    assert [int(b["attention_mask"].sum()) for b in written] == real  # the batches the baseline read
    (torch_row,) = res["baselines"]
    assert torch_row["tokens_per_s"] == pytest.approx(2 * 128 / torch_row["step_s_median"])
    assert "gsm8k batches: real tokens per batch" in capsys.readouterr().out


def test_bench_packing_same_losses_fewer_tokens(tmp_path):
    out = tmp_path / "packing.json"
    assert (
        load("bench_packing").main(
            [
                "--layers",
                "1",
                "--steps",
                "2",
                "--batch",
                "4",
                "--seq-len",
                "128",
                "--pack-multiples",
                "0,16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    padded, packed = json.loads(out.read_text())["results"]
    assert padded["tokens_computed"] == [4 * 128] * 2
    assert all(n < 4 * 128 for n in packed["tokens_computed"])
    assert packed["max_loss_gap_vs_first"] <= 1e-5 and len(packed["losses"]) == 2
    assert packed["total_speedup_vs_first"] == pytest.approx(sum(padded["step_s_all"]) / sum(packed["step_s_all"]))
    assert packed["step_shapes"] == len(set(packed["tokens_computed"]))  # one compile per packed size


def test_probe_xla_flags_measures_each_flag_set_in_its_own_process(tmp_path):
    pytest.importorskip("torch")
    probe = load("probe_xla_flags")
    assert probe.main(["--sets", "default", "--n", "64", "--threads", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "xla_flags_probe.json").read_text())
    assert set(res) == {"default", "torch"}
    for name in res:
        assert "error" not in res[name], res[name]
        assert res[name]["float32"] > 0 and res[name]["bfloat16"] > 0
    with pytest.raises(SystemExit, match="unknown flag set"):
        probe.main(["--sets", "nope"])
    bad = probe.probe(n=64, threads=1, flag_sets={"bogus": "--xla_cpu_no_such_flag=true"}, log=lambda *a: None)
    assert "error" in bad["bogus"]
