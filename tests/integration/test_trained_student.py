"""A trained student used straight from its run: `trained.load_student` (best / last / a step), the pipeline's
export of the best epoch (loads in transformers PyTorch with our logits), `ftcot ask`, `generate`, `export-hf`.

One tiny `ftcot run` (tests/helpers/pipeline.py) with export on; the student learns nothing useful, so what is
checked is that the loaded weights are exactly the ones each epoch evaluated, not what it answers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ftcot_jax import decode
from ftcot_jax.cli import main
from ftcot_jax.config import load_run_config
from ftcot_jax.pipeline.run import run as run_pipeline
from ftcot_jax.trained import FORMAT_FILE, load_student
from tests.helpers.models import forward, max_tree_diff, padded_batch
from tests.helpers.pipeline import tiny_run_config

T = "last_letter_concatenation"
QUESTION = 'Take the last letters of each words in "Lucky Mireya" and concatenate them.'


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, char_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("trained")
    path = tiny_run_config(tmp, tmp / "run", char_tokenizer_dir)  # export: false
    res = run_pipeline(load_run_config(path), log=lambda m: None)
    return tmp, path, res.run_dir


def _train_dir(run_dir, method="ft_cot"):
    return run_dir / "train" / T / method


def _predictions(train_dir, epoch):
    return [json.loads(line) for line in (train_dir / "predictions" / f"epoch_{epoch:03d}.jsonl").open()]


def _params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_best_last_and_step_are_the_checkpoints_each_epoch_evaluated(trained_run):
    _, _, run_dir = trained_run
    d = _train_dir(run_dir)
    results = json.loads((d / "results.json").read_text())
    best_step = results["best_over_epochs"]["step"]
    loaded = {sel: load_student(d, step=sel) for sel in ("best", "last")}
    assert loaded["best"].trained.step == best_step and loaded["best"].trained.selection == "best"
    assert loaded["last"].trained.step == results["last_epoch"]["step"] == results["steps"]
    assert best_step != results["steps"]  # accuracy ties at 0: the first epoch is the best one
    assert max_tree_diff(_params(loaded["best"].model), _params(loaded["last"].model)) > 1e-4
    # a step number and the step's own directory name the same checkpoint
    by_step = load_student(d, step=best_step)
    by_dir = load_student(d / "checkpoints" / str(best_step))
    assert by_step.trained.selection == by_dir.trained.selection == "step"
    assert max_tree_diff(_params(by_step.model), _params(loaded["best"].model)) == 0.0
    assert max_tree_diff(_params(by_dir.model), _params(loaded["best"].model)) == 0.0
    # each loaded checkpoint decodes exactly what training's evaluation of that epoch wrote
    for h in results["history"]:
        s = load_student(d, step=h["step"])
        records = _predictions(d, h["epoch"])
        gens = decode.generate(
            s.model, s.tokenizer, [r["prompt"] for r in records], max_new_tokens=s.trained.max_new_tokens, batch_size=4
        )
        assert [g.text for g in gens] == [r["completion"] for r in records]
        assert [r["prompt"] for r in records] == [s.trained.prompt(r["question"]) for r in records]


def test_turning_export_on_after_the_run_exports_the_best_epoch_without_retraining(trained_run):
    tmp, path, run_dir = trained_run
    res = run_pipeline(load_run_config(path, ["train.export=true"]), log=lambda m: None)
    ran = {sid for sid, e in res.events if e == "ran"}
    assert ran == {f"export/{T}/ft", f"export/{T}/ft_cot", f"evaluate/{T}/ft", f"evaluate/{T}/ft_cot", "report"}
    export = _train_dir(run_dir) / "export"
    card = json.loads((export / FORMAT_FILE).read_text())
    best = json.loads((_train_dir(run_dir) / "results.json").read_text())["best_over_epochs"]
    assert (card["step"], card["epoch"], card["selection"]) == (best["step"], best["epoch"], "best")
    assert card["task"] == T and card["method"] == "ft_cot" and card["template"] == "ft_cot_token"
    report = (run_dir / "report.md").read_text()
    assert f"`{export}`" in report and f"`{_train_dir(run_dir, 'ft') / 'export'}`" in report
    evals = json.loads((run_dir / "eval" / T / "ft_cot.json").read_text())
    assert evals["export"]["step"] == best["step"]
    # the export is the best checkpoint, and carries its training format
    exported, from_ckpt = load_student(export), load_student(_train_dir(run_dir))
    assert exported.trained == from_ckpt.trained
    assert max_tree_diff(_params(exported.model), _params(from_ckpt.model)) == 0.0


@pytest.mark.torch
def test_export_loads_in_transformers_pytorch_with_our_logits(trained_run):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    tmp, _, run_dir = trained_run
    out = tmp / "exported_best"
    assert main(["export-hf", str(_train_dir(run_dir)), str(out)]) == 0
    ours = load_student(_train_dir(run_dir)).model
    pt = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = padded_batch(60, lengths=(9, 5, 2))
    with torch.no_grad():
        want = pt(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(forward(ours, ids, mask))
    m = mask.astype(bool)
    assert np.abs(got[m] - want[m]).max() < 1e-4


def test_ask_prints_the_students_decode_of_the_formatted_question(trained_run, capsys):
    _, _, run_dir = trained_run
    d = _train_dir(run_dir)
    capsys.readouterr()
    assert main(["ask", str(d), QUESTION, "--json", "--step", "last"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = load_student(d, step="last")
    g = decode.generate(
        s.model, s.tokenizer, [s.trained.prompt(QUESTION)], max_new_tokens=s.trained.max_new_tokens, batch_size=8
    )
    assert out["completion"] == g[0].text and out["question"] == QUESTION
    parsed = s.trained.parse(g[0].text)
    assert (out["rationale"], out["answer"]) == (parsed.rationale, parsed.answer)
    # generate takes the same path and prints the raw text
    assert main(["generate", str(d), s.trained.prompt(QUESTION), "--step", "last"]) == 0
    assert capsys.readouterr().out.strip() == g[0].text.strip()


def test_evaluate_and_ask_with_samples_on_the_trained_student(trained_run, capsys):
    """`ftcot evaluate` scores the student as its epoch's evaluation did (same greedy records) and writes the
    votes; `ftcot ask --samples K` prints K answers and their vote."""
    _, _, run_dir = trained_run
    d = _train_dir(run_dir)
    assert main(["evaluate", str(d), "--step", "last", "--samples", "2", "--limit", "3", "--batch-size", "4"]) == 0
    assert "maj@2" in capsys.readouterr().out
    s = load_student(d, step="last")
    out = d / "evaluate" / f"{T}-test-k2"
    epoch = s.trained.epoch
    got = _predictions(out, epoch)
    assert [r["completion"] for r in got] == [r["completion"] for r in _predictions(d, epoch)[:3]]
    votes = [json.loads(x) for x in (out / "predictions" / f"epoch_{epoch:03d}.samples.jsonl").open()]
    assert len(votes) == 3 and all(len(v["samples"]) == 2 for v in votes)
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["samples"] == 2 and res["seconds"]["sample_decode_seconds"] > 0
    assert main(["ask", str(d), QUESTION, "--samples", "3", "--step", "last"]) == 0
    text = capsys.readouterr().out
    assert text.count("[") >= 3 and "[3/3] answer:" in text and "vote:" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "{run}", "q"], "holds 2 trained students; name one"),
        (["ask", "{tmp}", "q"], "not a student; expected an `ftcot run` run dir"),
        (["ask", "{train}", "q", "--step", "999"], "no checkpoint of step 999; saved steps"),
        (["ask", "{train}", "q", "--step", "newest"], "expected best, last or a step number"),
        (["generate", "{train}/checkpoints", "x", "--step", "999"], "no checkpoint of step 999"),
    ],
)
def test_a_path_that_is_not_a_student_is_a_one_line_error(trained_run, capsys, args, message):
    tmp, _, run_dir = trained_run
    where = {"run": run_dir, "tmp": tmp, "train": _train_dir(run_dir)}
    assert main([a.format(**where) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
