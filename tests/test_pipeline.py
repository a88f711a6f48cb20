"""`ftcot run`: a shrunk quickstart end to end (tiny random Llama, character tokenizer, 8 train questions,
4 test questions, 2 epochs), stage skipping, config errors, interrupt + resume.

The tiny student learns nothing useful; what is checked is the plumbing: every stage runs once, reruns
skip what is current, a changed train key reruns only train and later stages, an interrupted training
resumes and ends with the same report as an uninterrupted run.
"""

from __future__ import annotations

import json
import re
import string

import pytest

from ftcot_jax.cli import main as cli_main
from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline import paper
from ftcot_jax.pipeline.curate import methods_of
from ftcot_jax.pipeline.run import run as run_pipeline
from ftcot_jax.pipeline.stages import UNFINISHED

CHARS = string.ascii_letters + string.digits + " #->.,?:'\"()\n"
TINY_LLAMA = dict(
    model_type="llama",
    vocab_size=len(CHARS) + 3,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=1,
    pad_token_id=0,
)


def char_tokenizer_dir(path):
    """An HF fast tokenizer with one token per character (0 pad, 1 eos, 2 unk), saved to `path`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.save_pretrained(path)
    return str(path)


def tiny_config(tmp_path, run_dir, **extra) -> str:
    """A shrunk quickstart: same shape as configs/quickstart.yaml, tiny everything."""
    import yaml

    tok = tmp_path / "tok"
    if not tok.exists():
        char_tokenizer_dir(tok)
    cfg = {
        "run_dir": str(run_dir),
        "tasks": ["last_letter_concatenation"],
        "teacher": {"model": "reference", "cache_dir": str(tmp_path / "cache")},
        "curate": {"methods": ["ft", "ft_cot"], "max_train_questions": 8},
        "student": {"from_scratch": True, "model_config": TINY_LLAMA, "tokenizer": str(tok), "name": "tiny-llama"},
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "bucket": 64,
            "max_length": 256,
            "seed": 0,
            "mesh": {"num_devices": 1},
            "optim": {"lr": 3e-3},
            "log_every_steps": 1,
            "async_checkpointing": False,
            "export": False,
        },
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 16, "zero_shot_max_new_tokens": 8},
    }
    for k, v in extra.items():
        cfg[k] = v
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run(path, *overrides, **kw):
    return run_pipeline(load_run_config(path, list(overrides)), log=lambda m: None, **kw)


def ran(res):
    return {sid for sid, e in res.events if e == "ran"}


def skipped(res):
    return {sid for sid, e in res.events if e == "skipped"}


T = "last_letter_concatenation"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    path = tiny_config(tmp, tmp / "run_a")
    res = run(path)
    # a snapshot: later tests rerun this run dir with other configs
    res.evals = {
        m: json.loads((res.run_dir / "eval" / T / f"{m}.json").read_text()) for m in ("zero_shot", "ft", "ft_cot")
    }
    return tmp, path, res


def _table_rows(table: str, which: str) -> dict[str, list[str]]:
    """{row label: cells} of the 'best' or 'last' table of the report."""
    block = table.split("**Test accuracy (%), ")[1 if which == "best" else 2]
    rows = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[f"{cells[0]} / {cells[1]}"] = cells[3:]
    return rows


def test_end_to_end_report_matches_eval_files(first_run):
    tmp, path, res = first_run
    run_dir = res.run_dir
    assert {
        f"teach/{T}/greedy",
        f"curate/{T}/ft",
        f"curate/{T}/ft_cot",
        f"evaluate/{T}/zero_shot",
        f"train/{T}/ft",
        f"train/{T}/ft_cot",
        f"evaluate/{T}/ft",
        f"evaluate/{T}/ft_cot",
    } <= ran(res)
    assert not skipped(res)
    # resolved config and stage records in the run dir
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["student"]["name"] == "tiny-llama"
    stages = json.loads((run_dir / "stages.json").read_text())
    assert all(len(r["hash"]) == 16 and UNFINISHED not in r["outputs"] for r in stages.values())

    report = (run_dir / "report.md").read_text()
    assert res.table in report
    head = next(line for line in res.table.splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in head.strip("|").split("|")] == ["Method", "Student", "Params", "LastLetter"]
    for which, key in (("best", "best_over_epochs"), ("last", "last_epoch")):
        rows = _table_rows(res.table, which)
        for method, label in (("zero_shot", "Zero-shot"), ("ft", "Fine-tune"), ("ft_cot", "Fine-tune-CoT")):
            ev = json.loads((run_dir / "eval" / T / f"{method}.json").read_text())
            assert rows[f"{label} / tiny-llama"] == [f"{100 * ev[key]['accuracy']:.2f}"]
            assert ev[key]["n"] == 4
            if method != "zero_shot":
                assert len(ev["history"]) == 2 and ev["samples"] == 8
                best = max(h["accuracy"] for h in ev["history"])
                assert ev["best_over_epochs"]["accuracy"] == best
                # the per-epoch numbers are the trainer's own evaluation of its predictions files
                preds = [
                    json.loads(x)
                    for x in (run_dir / ev["train_dir"] / "predictions" / "epoch_001.jsonl").read_text().splitlines()
                ]
                assert ev["last_epoch"]["accuracy"] == sum(p["correct"] for p in preds) / len(preds)
    # the paper has no row for this student: its nearest open decoder student is shown, labelled as such
    best = _table_rows(res.table, "best")
    assert best["Fine-tune-CoT (paper) / GPT-2 124M (nearest size, another student)"] == ["4.67"]
    assert best["Fine-tune (paper) / GPT-2 124M (nearest size, another student)"] == ["1.33"]
    assert "(paper)" not in res.table.split("**Test accuracy (%), ")[2]
    for name in ("accuracy_per_epoch", "loss"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{name}.png" in report
    assert not (run_dir / "plots" / "accuracy_vs_d.png").exists()  # no diverse runs


def test_rerun_skips_and_train_key_change_reruns_train_only(first_run):
    tmp, path, first = first_run
    again = run(path)
    assert ran(again) == {"report"}
    assert again.table == first.table
    # (Fine-tune-CoT only, to keep the test short: the ft stages are simply not part of this config)
    changed = run(path, "train.optim.lr=1e-3", "curate.methods=[ft_cot]")
    assert ran(changed) == {f"train/{T}/ft_cot", f"evaluate/{T}/ft_cot", "report"}
    assert {f"teach/{T}/greedy", f"curate/{T}/ft_cot", f"evaluate/{T}/zero_shot"} == skipped(changed)
    assert json.loads((changed.run_dir / "config.json").read_text())["train"]["optim"]["lr"] == 1e-3


def test_interrupted_training_resumes_to_the_same_result(first_run):
    """Fine-tune-CoT only (the uninterrupted reference is the first run's): stop it in its second epoch,
    rerun the same command, compare."""
    tmp, _, first = first_run
    path = tiny_config(tmp, tmp / "run_b", curate={"methods": ["ft_cot"], "max_train_questions": 8})
    calls = []

    def stop_in_second_epoch(step, metrics):
        calls.append(step)
        if step == 4:  # 2 steps per epoch: after the epoch-1 checkpoint, before the epoch-2 one
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(path, train_hook=stop_in_second_epoch)
    stages = json.loads((tmp / "run_b" / "stages.json").read_text())
    assert stages[f"train/{T}/ft_cot"]["outputs"] == [UNFINISHED]
    assert f"evaluate/{T}/ft_cot" not in stages
    logs = []
    res = run_pipeline(load_run_config(path), log=logs.append)
    assert ran(res) == {f"train/{T}/ft_cot", f"evaluate/{T}/ft_cot", "report"}
    assert {f"teach/{T}/greedy", f"curate/{T}/ft_cot", f"evaluate/{T}/zero_shot"} <= skipped(res)
    assert any("resumed" in m and "from step 2" in m for m in logs), logs
    rows = lambda r, which: {
        k: v for k, v in _table_rows(r.table, which).items() if k.startswith(("Fine-tune-CoT", "Zero-shot"))
    }
    for which in ("best", "last"):
        assert rows(res, which) == rows(first, which)
    for method in ("ft_cot", "zero_shot"):
        a = first.evals[method]
        b = json.loads((res.run_dir / "eval" / T / f"{method}.json").read_text())
        assert a["history"] == b["history"] and a["best_over_epochs"] == b["best_over_epochs"]
    # the report shows only the methods of the current config
    assert "| Fine-tune |" not in res.table


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.optim.lrr=1", "unknown config key 'train.optim.lrr'"),
        ("teacher.temprature=0.5", "unknown config key 'teacher.temprature'"),
        ("train.epochs=abc", "config key 'train.epochs' expects an integer"),
        ("train.model=gpt2", "train.student is set by the pipeline; set student instead"),
        ("curate.methods=[ft,cot]", "curate.methods[] must be one of ft, ft_cot, diverse; got 'cot'"),
        ("curate.methods=[diverse]", "curate.diverse_samples is empty"),
        ("tasks=[no_such_task]", "unknown task 'no_such_task'"),
        ("tasks=[date_understanding]", "the reference teacher cannot teach 'date_understanding'"),
        ("noequals", "must look like key=value"),
        ("student.precision=fp8", "student.precision must be one of fp32, bf16"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, override, message):
    path = tiny_config(tmp_path, tmp_path / "run_err")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_run_config(path, [override])
    # the CLI prints the same error as one line, exit code 2, and runs nothing
    assert cli_main(["run", path, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run_err").exists()


def test_missing_config_file_and_dry_run(tmp_path, capsys):
    assert cli_main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tiny_config(tmp_path, tmp_path / "run_dry")
    assert cli_main(["run", path, "train.epochs=3", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 3


def test_quickstart_and_paper_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
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
