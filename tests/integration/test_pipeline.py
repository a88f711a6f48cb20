"""`ftcot run`: a shrunk quickstart end to end (tiny random Llama, character tokenizer, 8 train questions,
4 test questions, 2 epochs), stage skipping, interrupt + resume. (Config errors: tests/unit/test_run_config.py.)

The tiny student learns nothing useful; what is checked is the plumbing: every stage runs once, reruns
skip what is current, a changed train key reruns only train and later stages, an interrupted training
resumes and ends with the same report as an uninterrupted run.
"""

from __future__ import annotations

import json

import pytest

from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline.run import run as run_pipeline
from ftcot_jax.pipeline.stages import UNFINISHED
from tests.helpers.pipeline import tiny_run_config


def run(path, *overrides, **kw):
    return run_pipeline(load_run_config(path, list(overrides)), log=lambda m: None, **kw)


def ran(res):
    return {sid for sid, e in res.events if e == "ran"}


def skipped(res):
    return {sid for sid, e in res.events if e == "skipped"}


T = "last_letter_concatenation"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, char_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("pipe")
    path = tiny_run_config(tmp, tmp / "run_a", char_tokenizer_dir)
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


def test_interrupted_training_resumes_to_the_same_result(first_run, char_tokenizer_dir):
    """Fine-tune-CoT only (the uninterrupted reference is the first run's): stop it in its second epoch,
    rerun the same command, compare."""
    tmp, _, first = first_run
    path = tiny_run_config(
        tmp, tmp / "run_b", char_tokenizer_dir, curate={"methods": ["ft_cot"], "max_train_questions": 8}
    )
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
