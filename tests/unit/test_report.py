"""`ftcot report`: tables in the paper's layout from synthetic run directories (no training here; the
end-to-end check of real runs is in tests/integration/test_pipeline.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ftcot_jax.cli import main as cli_main
from ftcot_jax.pipeline import report


def make_run(root, name, *, student, tasks, methods, diverse=(), results, zero_shot=True):
    """A run dir as `ftcot run` leaves it: config.json + eval/<task>/<method>.json (+ metrics.jsonl)."""
    run = root / name
    cfg = {
        "run_dir": str(run),
        "tasks": list(tasks),
        "student": {"model": student},
        "teacher": {"model": "text-davinci-002"},
        "curate": {"methods": list(methods), "diverse_samples": list(diverse)},
        "eval": {"zero_shot": zero_shot},
    }
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg))
    for (task, key), accs in results.items():
        hist = [{"epoch": i, "step": 10 * (i + 1), "accuracy": a, "n": 100} for i, a in enumerate(accs)]
        kind = "zero_shot" if key == "zero_shot" else "diverse" if "aug" in key else key
        d = int(key.split("_")[3][:-3]) if kind == "diverse" else None
        train_dir = f"train/{task}/{key}"
        ev = {
            "task": task,
            "method": key,
            "kind": kind,
            "diverse_samples": d,
            "label": {"zero_shot": "Zero-shot", "ft": "Fine-tune", "ft_cot": "Fine-tune-CoT"}.get(
                kind, f"Diverse reasoning D={d}"
            ),
            "best_over_epochs": max(hist, key=lambda h: h["accuracy"]),
            "last_epoch": hist[-1],
            "history": [] if kind == "zero_shot" else hist,
            "samples": 50,
            "train_dir": train_dir,
        }
        (run / "eval" / task).mkdir(parents=True, exist_ok=True)
        (run / "eval" / task / f"{key}.json").write_text(json.dumps(ev))
        if kind != "zero_shot":
            (run / train_dir).mkdir(parents=True)
            (run / train_dir / "metrics.jsonl").write_text(
                "\n".join(json.dumps({"kind": "train", "step": s, "loss": 3.0 / s}) for s in range(1, 21))
                + '\n{"kind": "train", "step": 5, "lo'
            )  # a line cut by an interrupt
    return run


def rows(table, which="best"):
    block = table.split("**Test accuracy (%), ")[1 if which == "best" else 2]
    out = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            c = [x.strip() for x in line.strip("|").split("|")]
            out[(c[0], c[1])] = c[3:]
    return out


def test_gpt2_runs_beside_the_papers_numbers(tmp_path):
    run = make_run(
        tmp_path,
        "gpt2",
        student="gpt2",
        tasks=["multiarith", "coin_flip"],
        methods=["ft", "ft_cot", "diverse"],
        diverse=[8, 64],
        results={
            ("multiarith", "zero_shot"): [0.01],
            ("multiarith", "ft"): [0.05, 0.10, 0.08],
            ("multiarith", "ft_cot"): [0.02, 0.07, 0.09],
            ("multiarith", "ft_cot_t70_8aug"): [0.12, 0.11],
            ("multiarith", "ft_cot_t70_64aug"): [0.15, 0.2],
            ("coin_flip", "ft"): [0.5, 0.6],
            ("coin_flip", "ft_cot"): [0.7, 0.75],
        },
    )
    rep = report.write_report([run], tmp_path / "out")
    head = next(x for x in rep.table.splitlines() if x.startswith("| Method"))
    assert head == "| Method | Student | Params | MultiArith | Coin |"  # paper column order, not config order
    best, last = rows(rep.table, "best"), rows(rep.table, "last")
    assert best[("Fine-tune", "gpt2")] == ["10.00", "60.00"]
    assert last[("Fine-tune", "gpt2")] == ["8.00", "60.00"]
    assert best[("Fine-tune-CoT", "gpt2")] == ["9.00", "75.00"]
    assert best[("Zero-shot", "gpt2")] == ["1.00", ""]  # no zero-shot file for coin_flip
    assert best[("Diverse reasoning D=64", "gpt2")] == ["20.00", ""]
    # paper rows: GPT-2 124M, tab:performance_gpt2 (MultiArith, Coin)
    assert best[("Fine-tune (paper)", "GPT-2 124M")] == ["12.22", "60.00"]
    assert best[("Fine-tune-CoT (paper)", "GPT-2 124M")] == ["8.33", "77.33"]
    assert best[("Zero-shot (paper)", "GPT-2 124M")] == ["2.22", "6.67"]
    # diverse reasoning: the paper used D=64 on MultiArith and D=8 on Coin Flip only
    assert best[("Diverse reasoning D=64 (paper)", "GPT-2 124M")] == ["17.78", ""]
    assert best[("Diverse reasoning D=8 (paper)", "GPT-2 124M")] == ["", "76.00"]  # no D=8 MultiArith in the paper
    assert not any("(paper)" in k[0] for k in last)
    names = sorted(p.name for p in rep.plots)
    assert names == ["accuracy_per_epoch.png", "accuracy_vs_d.png", "loss.png"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert rep.table in md and "![accuracy_vs_d](plots/accuracy_vs_d.png)" in md


def test_several_runs_and_student_name_mapping(tmp_path):
    a = make_run(
        tmp_path,
        "a",
        student="/models/flan_t5_large/",
        tasks=["date_understanding"],
        methods=["ft_cot"],
        results={("date_understanding", "zero_shot"): [0.1], ("date_understanding", "ft_cot"): [0.8, 0.85]},
    )
    b = make_run(
        tmp_path,
        "b",
        student="google/t5-small",
        tasks=["strategy_qa"],
        methods=["ft"],
        zero_shot=False,
        results={("strategy_qa", "ft"): [0.55, 0.5]},
    )
    rep = report.write_report([a, b], tmp_path / "out", plots=False)
    best = rows(rep.table)
    assert best[("Fine-tune-CoT", "flan_t5_large")] == ["85.00", ""]
    # paper rows give the paper's number for every task column of the table
    assert best[("Fine-tune-CoT (paper)", "Flan-T5-Large 700M")] == ["84.68", "59.83"]
    assert best[("Zero-shot (paper)", "Flan-T5-Large 700M")] == ["9.91", "49.34"]
    assert best[("Fine-tune", "t5-small")] == ["", "55.00"]
    assert best[("Fine-tune (paper)", "T5-Small 60M")] == ["80.18", "58.81"]
    assert rep.plots == []


def test_only_the_current_configs_methods_are_reported(tmp_path):
    run = make_run(
        tmp_path,
        "r",
        student="gpt2",
        tasks=["svamp"],
        methods=["ft", "ft_cot"],
        results={("svamp", "ft"): [0.1], ("svamp", "ft_cot"): [0.2], ("svamp", "zero_shot"): [0.0]},
    )
    cfg = json.loads((run / "config.json").read_text())
    cfg["curate"]["methods"] = ["ft_cot"]  # the run was re-configured: ft.json is a leftover
    cfg["eval"]["zero_shot"] = False
    (run / "config.json").write_text(json.dumps(cfg))
    rep = report.write_report([run], run, paper=False, plots=False)
    assert set(rows(rep.table)) == {("Fine-tune-CoT", "gpt2")}


def test_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        report.write_report([tmp_path / "nope"], tmp_path)
    empty = make_run(tmp_path, "empty", student="gpt2", tasks=["svamp"], methods=["ft"], results={})
    with pytest.raises(ValueError, match="no evaluation results"):
        report.write_report([empty], tmp_path / "o")
    run = make_run(tmp_path, "r", student="gpt2", tasks=["svamp"], methods=["ft"], results={("svamp", "ft"): [0.1]})
    assert cli_main(["report", str(run), str(empty)]) == 2
    assert "--out" in capsys.readouterr().err
    (run / "eval" / "svamp" / "ft.json").write_text("{not json")
    assert cli_main(["report", str(run)]) == 2
    assert "ft.json is not valid JSON" in capsys.readouterr().err


def test_loss_curve_reads_resumed_and_cut_logs(tmp_path):
    run = make_run(tmp_path, "r", student="gpt2", tasks=["svamp"], methods=["ft"], results={("svamp", "ft"): [0.1]})
    steps, losses = report._loss_curve(run / "train" / "svamp" / "ft")
    assert steps == list(range(1, 21)) and losses[1] == pytest.approx(1.5)


def test_stage_times_list_finished_stages_in_order_with_the_total(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stages = {
        "train/multiarith/ft": {"hash": "a", "seconds": 600.4, "finished": "2026-12-04T10:10:00Z", "outputs": []},
        "teach/multiarith/greedy": {"hash": "b", "seconds": 1.2, "finished": "2026-12-04T10:00:00Z", "outputs": []},
        "train/multiarith/ft_cot": {"hash": "c", "outputs": ["<unfinished>"]},  # running: not listed
    }
    (run / "stages.json").write_text(json.dumps(stages))
    md = report.stage_times_section([run, tmp_path / "no_stages"])
    rows = [line for line in md if line.startswith("| ") and not line.startswith("| stage")]
    assert rows == [
        "| teach/multiarith/greedy | 1 | 2026-12-04T10:00:00Z |",
        "| train/multiarith/ft | 600 | 2026-12-04T10:10:00Z |",
        "| total | 602 | |",
    ]
    (run / "stages.json").write_text("{broken")
    with pytest.raises(ValueError, match="stages.json is not valid JSON"):
        report.stage_times_section([run])


def test_students_section_names_each_student_with_its_checkpoint(tmp_path):
    def cell(method, label, export):
        return report.Cell(
            run_dir=tmp_path, student="s", task="multiarith", method=method, kind=method, d=None, label=label,
            best=None, last=None, history=[], train_dir=tmp_path / "train" / "multiarith" / method, samples=8,
            params=None, export=export,
        )  # fmt: skip

    exported = {"dir": "export", "step": 82, "epoch": 1, "selection": "best", "accuracy": 0.0944}
    md = report.students_section([cell("ft_cot", "Fine-tune-CoT", exported), cell("ft", "Fine-tune", None)])
    table = [line for line in md if line.startswith("| multiarith")]
    assert table == [
        f"| multiarith | Fine-tune | `{tmp_path}/train/multiarith/ft` | orbax checkpoints (best epoch by default; "
        "`ftcot export-hf DIR OUT` writes an HF dir) |",
        f"| multiarith | Fine-tune-CoT | `{tmp_path}/train/multiarith/ft_cot/export` | step 82 (best, after epoch 2, "
        "test accuracy 9.44), HF format |",
    ]
    assert f"ftcot ask {tmp_path}/train/multiarith/ft_cot/export" in "\n".join(md)
    untrained = dataclasses.replace(cell("zero_shot", "Zero-shot", None), train_dir=None)
    assert report.students_section([untrained]) == []  # a run without training has no students


def test_self_consistency_rows_plots_and_step_by_step(tmp_path):
    """maj@K and pass@K rows at each method's best (or last) epoch, the accuracy-vs-K plot, the decode seconds;
    Distilling step-by-step gets its own row and no paper row."""
    run = make_run(
        tmp_path,
        "sc",
        student="gpt2",
        tasks=["multiarith"],
        methods=["ft_cot", "step_by_step"],
        results={("multiarith", "ft_cot"): [0.1, 0.3], ("multiarith", "step_by_step"): [0.2, 0.1]},
        zero_shot=False,
    )
    for key, label, maj in (("ft_cot", "Fine-tune-CoT", [0.2, 0.4]), ("step_by_step", "Distilling step-by-step", None)):
        f = run / "eval" / "multiarith" / f"{key}.json"
        ev = json.loads(f.read_text())
        ev["label"] = label
        if maj:
            for h, m in zip(ev["history"], maj, strict=True):
                h.update(samples=4, maj_accuracy=m, pass_accuracy=m + 0.1, maj_by_k={"1": 0.25, "2": 0.3, "4": m})
            ev["best_over_epochs"], ev["last_epoch"] = ev["history"][1], ev["history"][1]
            metrics = run / ev["train_dir"] / "metrics.jsonl"
            evals = [
                {"kind": "eval", "step": 10, "greedy_decode_seconds": 6.0, "sample_decode_seconds": 20.0, "samples": 4}
            ]
            metrics.write_text(metrics.read_text() + "\n" + "\n".join(json.dumps(r) for r in evals) + "\n")
        f.write_text(json.dumps(ev))
    rep = report.write_report([run], tmp_path / "out")
    best = rows(rep.table, "best")
    assert best[("Fine-tune-CoT", "gpt2")] == ["30.00"]
    assert best[("Fine-tune-CoT, maj@4", "gpt2")] == ["40.00"]
    assert best[("Fine-tune-CoT, pass@4", "gpt2")] == ["50.00"]
    assert best[("Distilling step-by-step", "gpt2")] == ["20.00"]
    assert not any("step-by-step" in k[0] and ("maj@" in k[0] or "(paper)" in k[0]) for k in best)
    assert "accuracy_vs_k.png" in {p.name for p in rep.plots}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| MultiArith | Fine-tune-CoT | 1 | 6 | 20 (K=4) |" in md
