"""`ftcot run` configs (config/run.py, pipeline/paper.py): errors name the key, the CLI prints them as one
line; dry runs; the shipped quickstart and paper configs load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ftcot_jax.cli import main as cli_main
from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline import paper
from ftcot_jax.pipeline.curate import methods_of
from tests.helpers.pipeline import tiny_run_config


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.optim.lrr=1", "unknown config key 'train.optim.lrr'"),
        ("teacher.temprature=0.5", "unknown config key 'teacher.temprature'"),
        ("train.epochs=abc", "config key 'train.epochs' expects an integer"),
        ("train.model=gpt2", "train.student is set by the pipeline; set student instead"),
        ("curate.methods=[ft,cot]", "curate.methods[] must be one of ft, ft_cot, diverse, step_by_step; got 'cot'"),
        ("curate.methods=[diverse]", "curate.diverse_samples is empty"),
        ("tasks=[no_such_task]", "unknown task 'no_such_task'"),
        ("tasks=[date_understanding]", "the reference teacher cannot teach 'date_understanding'"),
        ("noequals", "must look like key=value"),
        ("student.precision=fp8", "student.precision must be one of fp32, bf16"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, char_tokenizer_dir, override, message):
    path = tiny_run_config(tmp_path, tmp_path / "run_err", char_tokenizer_dir)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_run_config(path, [override])
    # the CLI prints the same error as one line, exit code 2, and runs nothing
    assert cli_main(["run", path, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run_err").exists()


def test_missing_config_file_and_dry_run(tmp_path, capsys, char_tokenizer_dir):
    assert cli_main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tiny_run_config(tmp_path, tmp_path / "run_dry", char_tokenizer_dir)
    assert cli_main(["run", path, "train.epochs=3", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 3


def test_quickstart_and_paper_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    q = load_run_config(root / "quickstart.yaml")
    assert q.student.model == "smollm2-135m-instruct" and q.teacher.model == "reference"
    assert set(q.curate.methods) == {"ft", "ft_cot"} and q.eval.zero_shot
    base = root / "paper" / "reference.yaml"
    cells = paper.paper_grid()
    # 9 students x (12 tasks x {ft, ft_cot} + 9 tasks with diverse reasoning)
    assert len(cells) == 9 * (12 * 2 + 9)
    for name in (
        "gpt2/multiarith/ft_cot_t70_64aug",
        "flan-t5-large/date_understanding/ft_cot_t70_8aug",
        "t5-small/gsm8k/ft",
    ):
        cfg = load_run_config(base, paper.paper_cell(name))
        assert cfg.train.epochs == 20 and cfg.train.batch_size == 8 and cfg.train.optim.lr == 3e-4
        assert cfg.run_dir == f"runs/paper/{name}"
    d = load_run_config(base, paper.paper_cell("gpt2/multiarith/ft_cot_t70_64aug"))
    assert [m.key for m in methods_of(d)] == ["ft_cot_t70_64aug"]
    assert "gpt2/gsm8k/ft_cot_t70_8aug" not in dict(cells)  # no diverse data for GSM8K in the paper
    with pytest.raises(ValueError, match="unknown paper grid cell"):
        paper.paper_cell("gpt2/multiarith/zs")


def test_diverse_config_loads():
    root = Path(__file__).resolve().parents[2] / "configs"
    cfg = load_run_config(root / "diverse_smollm2.yaml")
    assert cfg.teacher.model == "reference" and cfg.teacher.diverse_temperature == 0.7
    assert [(m.kind, m.samples) for m in methods_of(cfg)] == [("diverse", d) for d in (1, 2, 4, 8)]
    assert [m.key for m in methods_of(cfg)] == [f"ft_cot_t70_{d}aug" for d in (1, 2, 4, 8)]


def test_self_consistency_and_step_by_step_configs_load():
    """The measurement's configs: three methods on the released teacher with maj@8, diverse D=4 with maj@8."""
    root = Path(__file__).resolve().parents[2] / "configs" / "paper"
    real = load_run_config(root / "real_teacher_smollm2_sc.yaml", ["teacher.import_from=/released"])
    assert [(m.key, m.train_method, m.teacher_kind) for m in methods_of(real)] == [
        ("ft", "ft", None),
        ("ft_cot", "ft_cot", "ft_cot"),
        ("step_by_step", "step_by_step", "ft_cot"),
    ]
    assert (real.eval.samples, real.eval.temperature, real.train.label_weight, real.train.epochs) == (8, 0.7, 0.5, 3)
    div = load_run_config(root / "diverse_last_letter_sc.yaml")
    assert [m.key for m in methods_of(div)] == ["ft_cot", "ft_cot_t70_4aug"] and div.eval.samples == 8
    with pytest.raises(ValueError, match="eval.samples=8 with temperature 0.0"):
        load_run_config(root / "diverse_last_letter_sc.yaml", ["eval.temperature=0"])
