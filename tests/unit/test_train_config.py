"""Run config: strict keys, types, dotted overrides, YAML; mesh/device and batch checks; the CLI."""

from __future__ import annotations

import json

import pytest

from ftcot_jax.cli import main
from ftcot_jax.config import MeshConfig, TrainConfig, from_dict, load_config, replace, to_dict
from ftcot_jax.samples import write_samples
from ftcot_jax.train.mesh import mesh_shape
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2


def test_defaults_are_the_reference_hyperparameters():
    c = TrainConfig()
    assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == (3e-4, 0.9, 0.999, 1e-8, 0.01)
    assert (c.batch_size, c.epochs, c.max_length, c.precision) == (8, 20, 512, "fp32")
    assert (c.optim.decay, c.optim.warmup_steps, c.optim.clip_grad_norm) == ("none", 0, 0.0)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("run_dir: /tmp/r\noptim:\n  lr: 1e-4\nmesh:\n  fsdp: 2\nsamples: [a.tfrecord]\n")
    c = load_config(p, ["optim.warmup_steps=10", "precision=bf16", "samples=[x, y]"], cls=TrainConfig)
    assert c.optim.lr == 1e-4 and c.optim.warmup_steps == 10 and c.mesh.fsdp == 2 and c.precision == "bf16"
    assert c.samples == ("x", "y")
    assert from_dict(TrainConfig, to_dict(c)) == c
    assert replace(c, **{"optim.lr": 2e-4}).optim.lr == 2e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'; expected one of: lr,"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["batch_size=eight"], "config key 'batch_size' expects an integer"),
        (["precision=fp16"], "precision must be one of fp32, bf16"),
        (["batch_size=6", "grad_accum=4"], "batch_size (6) must be divisible by grad_accum (4)"),
        (["optim.decay=step"], "optim.decay must be one of none, linear, cosine"),
        (["export=maybe"], "config key 'export' expects true/false"),
        (["lr"], "must look like key=value"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(ValueError) as e:
        load_config(None, overrides, cls=TrainConfig)
    assert message in str(e.value)


def test_mesh_must_match_the_devices():
    assert mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert mesh_shape(MeshConfig(data=1, fsdp=1, tensor=1, num_devices=1), 8) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"has 4 devices but 8 are available"):
        mesh_shape(MeshConfig(data=2, fsdp=2, tensor=1), 8)
    with pytest.raises(ValueError, match="not divisible by 3"):
        mesh_shape(MeshConfig(data=-1, fsdp=3), 8)
    with pytest.raises(ValueError, match="num_devices=16 but only 8"):
        mesh_shape(MeshConfig(num_devices=16), 8)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--set", "optim.betas=1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "ftcot train: error: unknown config key 'optim.betas'; expected one of: lr, b1, b2, eps, "
        "weight_decay, warmup_steps, decay, min_lr_ratio, clip_grad_norm"
    )
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    # Mesh that does not fit the 8 test devices: rejected before any model is built.
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(tmp_path / "r"),
                "--task",
                "multiarith",
                "--method",
                "ft",
                "--set",
                "mesh.data=3",
                "--set",
                "mesh.fsdp=1",
            ]
        )
        == 2
    )
    assert "mesh (data=3, fsdp=1, tensor=1) has 3 devices but 8 are available" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert main(["train", "--print-config", "--run-dir", "r", "--epochs", "3", "--set", "optim.lr=1e-4"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["run_dir"] == "r" and c["epochs"] == 3 and c["optim"]["lr"] == 1e-4


def test_resume_without_checkpoint_is_an_error(tmp_path, capsys, char_tokenizer_dir):
    write_samples(tmp_path / "s.tfrecord", last_letter_samples(8))
    (tmp_path / "cfg.json").write_text(json.dumps({"model_config": CHAR_GPT2}))
    rc = main(
        [
            "train",
            "--config",
            str(tmp_path / "cfg.json"),
            "--run-dir",
            str(tmp_path / "run"),
            "--samples",
            str(tmp_path / "s.tfrecord"),
            "--set",
            "from_scratch=true",
            "--set",
            f"tokenizer={char_tokenizer_dir}",
            "--resume",
        ]
    )
    assert rc == 2
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_keys_of_the_flat_schema_move_into_the_student_and_eval_sections():
    old = load_config(None, ["model=gpt2", "precision=bf16", "eval_limit=5", "eval_every_epochs=2"], cls=TrainConfig)
    new = load_config(
        None, ["student.model=gpt2", "student.precision=bf16", "eval.limit=5", "eval.every_epochs=2"], cls=TrainConfig
    )
    assert old == new
    assert (old.student.model, old.precision, old.eval.limit, old.eval.every_epochs) == ("gpt2", "bf16", 5, 2)
    with pytest.raises(ValueError, match="'eval_limit' and 'eval.limit' name the same setting"):
        load_config(None, ["eval_limit=5", "eval.limit=6"], cls=TrainConfig)


@pytest.mark.parametrize("command", ["train --config", "run", "compare --config"])
def test_a_malformed_yaml_file_is_one_line_naming_file_and_place(tmp_path, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntasks: [a\n  b: c\n")
    assert main([*command.split(), str(bad)]) == 2
    err = capsys.readouterr().err
    name = command.split()[0]
    assert (
        err == f"ftcot {name}: error: config file {bad} is not valid YAML (line 3, column 4): "
        "expected ',' or ']', but got ':'\n"
    )


def test_malformed_override_values_and_non_utf8_files_are_one_line(tmp_path, capsys):
    assert main(["train", "--set", "samples=[a"]) == 2
    assert capsys.readouterr().err == (
        "ftcot train: error: override 'samples=[a': the value is not valid YAML: expected ',' or ']', "
        "but got '<stream end>'\n"
    )
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["train", "--config", str(binary)]) == 2
    assert (
        capsys.readouterr().err
        == f"ftcot train: error: config file {binary} is not UTF-8 text; expected a YAML mapping\n"
    )
