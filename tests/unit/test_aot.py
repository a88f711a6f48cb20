"""Ahead-of-time compilation for TPU slices (ftcot_jax/aot, `ftcot compile`): slice names, HLO facts, and real
compiles of tiny students by libtpu's compiler (skipped where the tpu extra is not installed)."""

from __future__ import annotations

import importlib.util
import json

import jax
import pytest
import yaml

from ftcot_jax.aot import hlo, topology
from ftcot_jax.aot.topology import TopologyError, parse
from ftcot_jax.config import TrainConfig, from_dict
from tests.helpers.models import CHAR_GPT2, CHAR_LLAMA, CHAR_T5

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install -e '.[tpu]')"
)

TINY = {
    "gpt2": dict(CHAR_GPT2, n_layer=1, n_embd=32, n_head=4),
    "t5": dict(CHAR_T5, num_layers=1, num_decoder_layers=1),
    "llama": dict(CHAR_LLAMA, num_hidden_layers=1),
}


def _cfg(model_config, **kw) -> TrainConfig:
    base = dict(
        run_dir="unused", from_scratch=True, model_config=model_config, batch_size=8, max_length=64,
        mesh={"data": -1}, eval={"batch_size": 8, "max_new_tokens": 16},
    )  # fmt: skip
    return from_dict(TrainConfig, {**base, **kw})


@pytest.mark.parametrize(
    "name, topo, chips",
    [
        ("v5e-8", "v5e:2x4", 8),
        ("v5litepod-16", "v5e:4x4", 16),
        ("v4-8", "v4:2x2x1", 4),
        ("v5p-8", "v5p:2x2x1", 4),
        ("v6e-8", "v6e:2x4", 8),
        ("V5E:2x2", "v5e:2x2", 4),
        ("v4:2x2x2", "v4:2x2x2", 8),
    ],
)
def test_slice_names_map_to_the_compilers_topologies(name, topo, chips):
    sl = parse(name)
    assert (sl.topology, sl.chips, sl.num_slices) == (topo, chips, 1)
    assert sl.chip.hbm_bytes > 10 * 2**30 and sl.chip.peak_bf16_flops > 1e14


@pytest.mark.parametrize(
    "name, slices, message",
    [
        ("v5e-7", 1, "no v5e slice of 7 chips"),
        ("v4-3", 1, "N must be even"),
        ("tpu-9000", 1, "unknown; accepted: v4-N"),
        ("v5e-8", 0, "--num-slices 0: expected an integer >= 1"),
    ],
)
def test_bad_slice_names_are_one_line_errors(name, slices, message):
    with pytest.raises(TopologyError, match=message) as e:
        parse(name, slices)
    assert "\n" not in str(e.value)


def test_collectives_and_needed_bytes_are_read_from_the_compiler_text():
    text = "\n".join(
        [
            "  %all-reduce.1 = f32[1024]{0} all-reduce(f32[1024]{0} %p), replica_groups={}",
            "  %ag = (bf16[8,64]{1,0}, bf16[64,64]{1,0}) all-gather-start(bf16[8,64]{1,0} %x), dimensions={0}",
            "  %agd = bf16[64,64]{1,0} all-gather-done(%ag)",
            "  %rs = (f32[2,4]{1,0}, s32[4]{0}) reduce-scatter(f32[8,4]{1,0} %y, s32[16]{0} %z), dimensions={0}",
            "  %add = f32[1024]{0} add(f32[1024]{0} %a, f32[1024]{0} %b)",
        ]
    )
    c = hlo.collectives(text)
    assert c["all-reduce"] == {"count": 1, "bytes": 4096}
    assert c["all-gather"] == {"count": 1, "bytes": 64 * 64 * 2}  # an async start: its largest buffer
    assert c["reduce-scatter"] == {"count": 1, "bytes": 2 * 4 * 4 + 4 * 4}
    assert c["all-to-all"]["count"] == c["collective-permute"]["count"] == 0
    err = (
        "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. the total memory required for HLO "
        "temporaries (24.13G) exceeds available HBM (15.75G)."
    )
    assert hlo.is_out_of_memory(err)
    assert hlo.needed_bytes(err) == int(24.13 * 2**30)


@needs_libtpu
def test_a_tiny_gpt2_compiles_for_a_v5e_slice_with_its_decode():
    from ftcot_jax.aot.compile import compile_config, to_json

    sl = parse("v5e:2x2")
    rep = to_json(compile_config(_cfg(TINY["gpt2"]), sl), sl)
    assert rep["fits"] and rep["devices"] == 4 and rep["platform"] == "tpu" and rep["mesh"]["data"] == 4
    assert [p["name"] for p in rep["programs"]] == ["train_step", "decode_prefill", "decode_loop"]
    assert 0 < rep["peak_hbm_bytes_per_chip"] < rep["hbm_capacity_bytes_per_chip"] == int(15.75 * 2**30)
    assert rep["collectives"]["all-reduce"]["count"] >= 1  # the data-parallel gradient reduction
    assert rep["flops_per_step"] == 6 * rep["params"] * 8 * 64 and rep["step_time_lower_bound_s"] > 0


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_tiny_t5_and_llama_compile_for_a_v5e_slice(family):
    from ftcot_jax.aot.compile import compile_config, to_json

    sl = parse("v5e:2x2")
    rep = to_json(compile_config(_cfg(TINY[family], mesh={"data": 2, "fsdp": 2}), sl), sl)
    assert rep["fits"] and rep["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert all(p["fits"] for p in rep["programs"]) and len(rep["programs"]) == 3
    assert rep["collectives"]["all-gather"]["count"] >= 1  # fsdp gathers the sharded params


@needs_libtpu
@pytest.mark.slow
def test_two_slices_compile_with_the_data_axis_across_them():
    from ftcot_jax.aot.compile import compile_config, to_json

    sl = parse("v5e:2x2", num_slices=2)
    rep = to_json(compile_config(_cfg(TINY["gpt2"]), sl, decode=False), sl)
    assert rep["fits"] and rep["devices"] == 8 and rep["num_slices"] == 2 and rep["mesh"]["data"] == 8
    with pytest.raises(ValueError, match="data axis must be a multiple of the number of slices"):
        compile_config(_cfg(TINY["gpt2"], mesh={"data": 1, "fsdp": -1}), sl, decode=False)


@needs_libtpu
def test_a_step_that_does_not_fit_is_one_line_and_exit_1(tmp_path, capsys):
    from ftcot_jax.cli import main

    big = dict(CHAR_GPT2, n_layer=1, n_embd=2048, n_head=16, vocab_size=600_000)  # 1.2B params, replicated
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(
            dict(
                run_dir=str(tmp_path / "r"),
                from_scratch=True,
                model_config=big,
                batch_size=4,
                max_length=32,
                mesh={"data": -1},
            )
        )
    )
    out = tmp_path / "r.json"
    assert main(["compile", str(path), "--topology", "v5e-4", "--no-decode", "--json", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "does not fit v5e-4 (v5e:2x2 x 1)" in err[0] and "GiB per chip of 15.75 GiB per chip" in err[0]
    assert "mesh.fsdp" in err[0] and "train.remat" in err[0]
    rep = json.loads(out.read_text())
    assert rep["fits"] is False and rep["peak_hbm_bytes_per_chip"] > rep["hbm_capacity_bytes_per_chip"]
    for key in ("topology", "devices", "collectives", "flops_per_step"):
        assert key in rep


def test_compile_and_train_lower_the_same_step(tmp_path, char_tokenizer):
    """`ftcot compile` lowers the trainer's own step: for one config, the compile's abstract lowering and the
    trainer's lowering of a real batch at max_length give the same program text."""
    from ftcot_jax.aot.compile import compile_student, lower_train_step
    from ftcot_jax.train.loop import Trainer
    from ftcot_jax.train.mesh import make_mesh
    from ftcot_jax.train.step import setup
    from tests.helpers.data import last_letter_samples

    cfg = _cfg(
        TINY["gpt2"],
        run_dir=str(tmp_path / "run"),
        bucket=64,
        pack_multiple=0,
        mesh={"data": 2, "fsdp": 2, "num_devices": 4},
    )
    trainer = Trainer.create(cfg, tokenizer=char_tokenizer, samples=last_letter_samples(8, method="ft_cot"))
    trainer.restore_or_init()
    local = trainer.batcher.batch(0, 0)
    assert local["input_ids"].shape[-1] == cfg.max_length
    with jax.set_mesh(trainer.setup.mesh):
        trained = trainer.setup.step_fn.lower(trainer.state, trainer.setup.put_batch(local)).as_text()
    trainer.logger.close()
    trainer.ckpt.close()
    ccfg, student = compile_student(cfg)
    st = setup(ccfg, student=student, mesh=make_mesh(ccfg))
    compiled = lower_train_step(st, ccfg).as_text()
    assert compiled == trained


def test_unknown_student_shape_is_a_one_line_error(tmp_path):
    from ftcot_jax.aot.shapes import KNOWN, student_hf_config
    from ftcot_jax.config import StudentSection

    assert student_hf_config(StudentSection(model="google/flan-t5-large"))["d_ff"] == 2816
    assert {"gpt2-xl", "flan-t5-xl", "smollm2-1.7b", "t5-3b"} <= set(KNOWN)
    with pytest.raises(ValueError, match="compiling needs its architecture"):
        student_hf_config(StudentSection(model="some/unknown-model"))
    assert topology.accepted_names().startswith("v4-N")


def test_the_paper_grid_has_one_shape_per_student():
    from ftcot_jax.aot.config import train_config_of_run
    from ftcot_jax.aot.grid import shape_key
    from ftcot_jax.config import load_run_config
    from ftcot_jax.pipeline.paper import PAPER_STUDENTS, paper_grid

    config = "configs/paper/reference.yaml"
    grid = paper_grid()
    keys = {shape_key(train_config_of_run(load_run_config(config, cell))) for _, cell in grid}
    assert len(grid) > 100 and len(keys) == len(PAPER_STUDENTS)


@needs_libtpu
def test_run_compile_only_compiles_the_runs_shape(tmp_path, capsys):
    from ftcot_jax.cli import main

    cfg = dict(
        run_dir=str(tmp_path / "run"), tasks=["last_letter_concatenation"], teacher={"model": "reference"},
        student={"model_config": TINY["gpt2"], "from_scratch": True, "tokenizer": "unused"},
        train={"batch_size": 8, "max_length": 64, "mesh": {"data": -1}}, eval={"batch_size": 8, "max_new_tokens": 16},
    )  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "grid.json"
    assert main(["run", str(path), "--compile-only", "--topology", "v5e-4", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| student | cells |" in table and "| yes |" in table
    (row,) = json.loads(out.read_text())
    assert row["fits"] and row["devices"] == 4 and row["cells"] == [str(tmp_path / "run")]
    assert not (tmp_path / "run").exists()  # nothing ran
