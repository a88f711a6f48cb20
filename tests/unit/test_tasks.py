"""The 12 tasks: exact preprocessing (pinned fingerprints), reference splits, bad input, AQuA train, CLI.

Expected hashes were computed once from the reference unified files and split files
(`data/dataset/<key>.json`, `data/split/<key>__<split>.json` of github.com/itsnamgyu/reasoning-teacher) and are
pinned here; the tests never read those files. Canonical JSON of a task =
json.dumps([{sample_index, question, answer, rationale?}, ...], sort_keys=True, ensure_ascii=False,
separators=(",", ":")) with `rationale` present only for tasks that have one; sha256 of its UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from ftcot_jax import cli
from ftcot_jax.tasks import (
    TASK_NAMES,
    AquaTrainUnavailable,
    Task,
    TaskDataError,
    default_data_dir,
    load_task,
    subsample_indices,
)
from ftcot_jax.tasks import aqua as aqua_mod

RECORD_SHA256 = {
    "single_eq": "a934f27aeae1e885d13c6fb045a649df18fb5b16cb845c90b7322a5e49921a7f",
    "addsub": "7d82b9d338f415f6c211d542b691cd0ba6d4235534446c1c4495f4e020ab2303",
    "multiarith": "b207a11d731a9a7bbbbcbcc6e54ecfe1b24da001491f2baf1567872c5d06a886",
    "gsm8k": "9cbbd479a77d03b24566ec7817923d59c6ab0bac50a13bd5aaafd2381c42cede",
    "svamp": "813f9f09287e3635c68e58bc10fdf0d931d1ae74a70ed217debde7000c0b8f21",
    "date_understanding": "8715cda7d4bce756c38f043744245597d8bcfb28c4f6df540ff62828a88d7b27",
    "tracking_shuffled_objects": "7ac16de827c5a434f76fe5821aa8338e23908b41413657c9b66f8b74156e2c8b",
    "last_letter_concatenation": "51d31f59d5fb6b9cd51fcc18f53c96130ae86f2c057f257afe153390da143c7a",
    "coin_flip": "87defbea525621ba52cd8ca92b6cb6b233076c46ecf33358c8e98614861a20cd",
    "commonsense_qa": "8d2275ffd010fcfd620ee4217239b5a1d8a76b20a9002f58b5073e2be3699b23",
    "strategy_qa": "9029d23182f89ff2d06de0c53e7dec261e6967843c30074a68c710d378898ad2",
}
# AQuA test rows (reference file aqua__TEST_ONLY with sample_index shifted to 97467 + i).
AQUA_TEST_SHA256 = "1add4e37b7121981af080984cf65fd2d31471621bcceb8720a19fb33c4dc9b0e"

# (task, split file) -> (sha256(train indices), sha256(test indices), n_train, n_test)
SPLIT_SHA256 = {
    ("addsub", "default"): (
        "459aabc3ab6d789e500b9a230f5d70e4d9633bb6e43c3b4e2660fc9ec0b74f79",
        "ba2974021c6e2e277dd35c33301696594f060f89234fc0764b3e520d0d6095c6",
        276,
        119,
    ),
    ("aqua", "default"): (
        "fb025c384b92bbb72407333d855318d192bf3c447de892bc3406abfbc7bc3087",
        "86000c6a75bac5b83fc01ad676fff70bbd4433df305ad73c8fa114c76840866d",
        10000,
        254,
    ),
    ("coin_flip", "default"): (
        "3e4ab7674e8de415c32eb177aefb66efc7c0425772e0ca61eeb8998baa4ac41f",
        "99c0bbe19444c26f5aa7b99b70bd0df5467f06ff806dc5bb8ae86d754799aa91",
        350,
        150,
    ),
    ("commonsense_qa", "default"): (
        "bd7d979bba43c10748c2c02bf62e446480789532bfb8b001fc5fab111750084d",
        "8ef52baddfc6b0d99aceb6c4ffdd8d24b4f87d58c87cf200bcc5d6e44fe4ac5b",
        9741,
        1221,
    ),
    ("date_understanding", "default"): (
        "0d0fcbdac73a6390f36d41226ef63feba1064f6b3f3ac60a5d7828e1c4e5ceeb",
        "28ee421b46b41ea28aed07eeb933a954c2798a4a122e137cb8cf789191a46304",
        258,
        111,
    ),
    ("date_understanding", "template"): (
        "5ca97b4390596c85c65df6368a98e06cf40e20e1f037b587a0b57f04ace5ed4d",
        "cf21f8503d38640b34b5756970eafcc2ed4d1f84d50219b78a8e7137d189934f",
        261,
        108,
    ),
    ("gsm8k", "default"): (
        "e09605460815ef2c0d8447da037a491f55088feb51dcd8e5d7514ca59ae67f1c",
        "119b6f5e76814d301622a7f0ba26c9364c4c4d542048f5f8ba528c0311066def",
        7473,
        1319,
    ),
    ("last_letter_concatenation", "default"): (
        "3e4ab7674e8de415c32eb177aefb66efc7c0425772e0ca61eeb8998baa4ac41f",
        "99c0bbe19444c26f5aa7b99b70bd0df5467f06ff806dc5bb8ae86d754799aa91",
        350,
        150,
    ),
    ("multiarith", "default"): (
        "02c81c4619bcd91cd8cc41d74f3c6620c9b340aeea72566248fe422b8620770b",
        "b4a135bf5b278718b87837471f335f1526cd67ab736d1f176daee1072c37d060",
        420,
        180,
    ),
    ("multiarith", "template"): (
        "ae741a72b25072f35b655cf0cd10c7a10fa239919530797da720272ff9061acf",
        "e3e4e61d37cd1ef67892572cdbff5a01c3db4f34b9457243a014e66bb2d9b08f",
        413,
        187,
    ),
    ("single_eq", "default"): (
        "f70f22aa8acb6017f7de63965356c75b4923fd29c26ec55a34d1548fa3015720",
        "ad2caf4a7e66846d95861c046749a2f424c6133a36a7d6c939e36feee16c388b",
        356,
        152,
    ),
    ("strategy_qa", "default"): (
        "20d73b14a280c42a509b752b4f4e37504e851f9ccc47cb3138c09d034e2a65ac",
        "530dd079315f5a9211d9916fe64d03ab0d94b68f7393188077d8b172307c766a",
        1603,
        687,
    ),
    ("svamp", "default"): (
        "022fea6055fb3f9f317a29566717fc10e47c7849fa0cc022940dee3c18c50413",
        "339e0d61707d2968cbd2fc19201daa211761a24e93ba1918d7cfc76ce565266a",
        700,
        300,
    ),
    ("tracking_shuffled_objects", "default"): (
        "6849a32ae0cfe8f7fb99411939a3446ac14e0eb66b00f027d3a475e7a56815e1",
        "4d734b49d4d636fbf2331e6b15b719da2881dd896868592976f08f35da05ea93",
        525,
        225,
    ),
}

# The reference's `src/data/dataset.py` DATASET_SIZES and the train / test split sizes.
SIZES = {
    "single_eq": (508, 356, 152),
    "addsub": (395, 276, 119),
    "multiarith": (600, 420, 180),
    "gsm8k": (8792, 7473, 1319),
    "aqua": (97721, 10000, 254),
    "svamp": (1000, 700, 300),
    "date_understanding": (369, 258, 111),
    "tracking_shuffled_objects": (750, 525, 225),
    "last_letter_concatenation": (500, 350, 150),
    "coin_flip": (500, 350, 150),
    "commonsense_qa": (10962, 9741, 1221),
    "strategy_qa": (2290, 1603, 687),
}


def sha(obj) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def records(examples) -> list[dict]:
    out = []
    for e in examples:
        r = {"sample_index": e.sample_index, "question": e.question, "answer": e.answer}
        if e.rationale is not None:
            r["rationale"] = e.rationale
        out.append(r)
    return out


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path, monkeypatch):
    """Hermetic: never see a real cached AQuA train file, never touch the network by accident."""
    monkeypatch.setenv("FTCOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FTCOT_DATA_DIR", raising=False)
    monkeypatch.delenv("FTCOT_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


# --- exact preprocessing ------------------------------------------------------------------------


def test_task_names_paper_order():
    assert TASK_NAMES == (
        "single_eq",
        "addsub",
        "multiarith",
        "gsm8k",
        "aqua",
        "svamp",
        "date_understanding",
        "tracking_shuffled_objects",
        "last_letter_concatenation",
        "coin_flip",
        "commonsense_qa",
        "strategy_qa",
    )


@pytest.mark.parametrize("name", sorted(RECORD_SHA256))
def test_fingerprint_matches_reference(name):
    task = load_task(name)
    assert [e.sample_index for e in task.examples] == list(range(SIZES[name][0]))
    assert sha(records(task.examples)) == RECORD_SHA256[name]
    assert all((e.rationale is not None) == task.has_rationale for e in task.examples)


def test_aqua_test_part_fingerprint():
    task = load_task("aqua")
    assert not task.complete
    assert [e.sample_index for e in task.examples] == list(range(97467, 97721))
    assert sha(records(task.examples)) == AQUA_TEST_SHA256
    assert task.split("test") == task.examples
    assert task.example(97467).answer == "A"


def test_documented_quirks():
    tracking = load_task("tracking_shuffled_objects").examples[20].question
    assert "At the end of the game, Claire has the \nWhich choice is true? Answer choices: (A) blue ball," in tracking
    date = load_task("date_understanding").examples[20]
    assert date.question == (
        "Tomorrow is 11/12/2019. What is the date yesterday in MM/DD/YYYY?\nWhich choice is true? Answer choices: "
        "(A) 09/10/2019, (B) 11/06/2019, (C) 11/10/2019, (D) 11/11/2019, (E) 11/10/2076, (F) 11/17/2019."
    )
    assert date.answer == "C"
    n_choices = [e.question.count(", (") + 1 for e in load_task("date_understanding").examples]
    assert (n_choices.count(6), n_choices.count(5)) == (311, 58)  # the reference's date_understanding choice counts
    csqa = load_task("commonsense_qa").examples[20]
    assert csqa.question.endswith(
        "Answer choices: (A) excitement, (B) fatigue, (C) anger, (D) hurting, (E) getting tired."
    )
    assert csqa.answer == "E"
    assert load_task("single_eq").examples[0].answer == "43.0"
    assert load_task("svamp").examples[0].answer == "51.0"
    gsm = load_task("gsm8k")
    assert gsm.examples[0].answer == "72" and gsm.examples[0].rationale.endswith("April and May.\n")
    assert any("," in e.answer for e in gsm.examples)
    assert {e.answer for e in load_task("strategy_qa").examples} == {"Yes", "No"}
    assert {e.answer for e in load_task("coin_flip").examples} == {"yes", "no"}


# --- splits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SPLIT_SHA256))
def test_split_indices_pinned(key):
    name, split_name = key
    task = load_task(name)
    train, test = task.split_indices("train", split_name), task.split_indices("test", split_name)
    want_train, want_test, n_train, n_test = SPLIT_SHA256[key]
    assert (len(train), len(test)) == (n_train, n_test)
    assert (sha(train), sha(test)) == (want_train, want_test)
    assert not set(train) & set(test)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_sizes_match_spec(name):
    task = load_task(name)
    n, n_train, n_test = SIZES[name]
    assert task.num_examples == n
    assert (len(task.split_indices("train")), len(task.split_indices("test"))) == (n_train, n_test)
    if name != "aqua":
        assert len(task.examples) == n
        assert len(task.split_indices("train")) + len(task.split_indices("test")) == n
        assert [e.sample_index for e in task.split("test")] == task.split_indices("test")


def test_split_generation_rules():
    """The split files follow the reference generator (random 70/30, seed 0; AQuA 10k subsample)."""
    for name in ("single_eq", "svamp", "strategy_qa"):
        n = SIZES[name][0]
        perm = np.random.RandomState(0).permutation(range(n))
        k = round(n * 0.7)
        task = load_task(name)
        assert task.split_indices("train") == sorted(perm[:k].tolist())
        assert task.split_indices("test") == sorted(perm[k:].tolist())
    aqua = load_task("aqua")
    assert aqua.split_indices("train") == sorted(np.random.RandomState(0).permutation(range(97467))[:10000].tolist())
    assert aqua.split_indices("test") == list(range(97467, 97721))
    assert subsample_indices(list(range(100)), 8) == sorted(
        np.random.RandomState(0).permutation(range(100))[:8].tolist()
    )


def test_template_splits_and_names():
    assert load_task("multiarith").split_names == ("default", "template")
    assert load_task("date_understanding").split_names == ("default", "template")
    assert load_task("gsm8k").split_names == ("default",)
    with pytest.raises(ValueError, match=r"task 'gsm8k' has no split 'template'; expected one of: default"):
        load_task("gsm8k").split_indices("train", "template")
    with pytest.raises(ValueError, match=r"unknown split 'dev' for task 'gsm8k'; expected 'train' or 'test'"):
        load_task("gsm8k").split("dev")


def test_few_shot_prompts():
    exemplars = {
        "single_eq": 8,
        "addsub": 8,
        "multiarith": 8,
        "gsm8k": 8,
        "svamp": 8,
        "aqua": 4,
        "date_understanding": 6,
        "commonsense_qa": 7,
        "strategy_qa": 6,
        "last_letter_concatenation": 8,
        "coin_flip": 8,
    }
    assert load_task("tracking_shuffled_objects").few_shot_cot_prompt is None
    for name, k in exemplars.items():
        prompt = load_task(name).few_shot_cot_prompt
        assert prompt.startswith("Q: ") and prompt.count("\nQ: ") == k - 1 and prompt.count("The answer is") == k
    assert load_task("coin_flip").few_shot_cot_sample_indices == [7, 66, 76, 166, 271, 274, 383, 418]


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_task():
    with pytest.raises(ValueError, match=r"^unknown task 'gsm9k'; expected one of: single_eq, addsub, .*strategy_qa$"):
        load_task("gsm9k")


def _copy_data(tmp_path, *raw_dirs):
    root = tmp_path / "data"
    shutil.copytree(default_data_dir() / "split", root / "split")
    for d in raw_dirs:
        shutil.copytree(default_data_dir() / "raw" / d, root / "raw" / d)
    return root


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_truncated_json_file(tmp_path):
    root = _copy_data(tmp_path, "SVAMP")
    path = root / "raw" / "SVAMP" / "SVAMP.json"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(TaskDataError) as e:
        load_task("svamp", data_dir=root)
    msg = _one_line(e)
    assert (
        "task 'svamp'" in msg and str(path) in msg and "corrupt or truncated" in msg and "expected a JSON list" in msg
    )


def test_truncated_jsonl_file(tmp_path):
    root = _copy_data(tmp_path, "grade-school-math")
    path = root / "raw" / "grade-school-math" / "test.jsonl"
    path.write_bytes(path.read_bytes()[:-40])  # cut inside the last line
    with pytest.raises(TaskDataError) as e:
        load_task("gsm8k", data_dir=root)
    msg = _one_line(e)
    assert "task 'gsm8k'" in msg and str(path) in msg and "line 1319" in msg


def test_file_with_missing_records(tmp_path):
    root = _copy_data(tmp_path, "coin_flip")
    path = root / "raw" / "coin_flip" / "coin_flip.json"
    data = json.loads(path.read_text())
    data["examples"] = data["examples"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(TaskDataError) as e:
        load_task("coin_flip", data_dir=root)
    assert _one_line(e) == f"task 'coin_flip': {path} has 499 records; expected 500 (truncated file?)"


def test_missing_file_and_corrupt_split(tmp_path):
    root = _copy_data(tmp_path, "coin_flip")
    with pytest.raises(TaskDataError) as e:
        load_task("addsub", data_dir=root)
    assert "task 'addsub': data file" in _one_line(e) and "AddSub.json is missing" in str(e.value)
    (root / "split" / "coin_flip__default.json").write_text('{"train": [1, 2], "test": [3')
    task = load_task("coin_flip", data_dir=root)
    with pytest.raises(TaskDataError) as e:
        task.split_indices("train")
    assert "coin_flip__default.json is corrupt or truncated" in _one_line(e)
    (root / "split" / "coin_flip__default.json").write_text('{"train": [2, 1], "test": [3]}')
    with pytest.raises(TaskDataError, match="'train' is not a sorted list of distinct ints in 0..499"):
        Task("coin_flip", root).split_indices("train")


def test_data_dir_env_override(tmp_path, monkeypatch):
    root = _copy_data(tmp_path, "last_letters")
    (root / "raw" / "last_letters" / "last_letters.json").write_text("{oops")
    monkeypatch.setenv("FTCOT_DATA_DIR", str(root))
    with pytest.raises(TaskDataError, match="last_letters.json is corrupt or truncated"):
        load_task("last_letter_concatenation")


# --- AQuA train ---------------------------------------------------------------------------------------


def test_aqua_train_offline_error(tmp_path):
    task = Task("aqua", default_data_dir())  # uncached instance
    with pytest.raises(AquaTrainUnavailable) as e:
        task.split("train")
    msg = _one_line(e)
    assert msg.startswith("task 'aqua': the train split needs AQuA train.json, which is not bundled and could not")
    assert aqua_mod.AQUA_TRAIN_URL in msg and "network disabled in tests" in msg
    assert str(tmp_path / "cache" / "data" / "AQuA" / "train.json") in msg
    assert not (tmp_path / "cache" / "data" / "AQuA").exists() or not any(
        (tmp_path / "cache" / "data" / "AQuA").iterdir()
    )
    assert len(task.split("test")) == 254  # the bundled part still works


def test_aqua_offline_flag_skips_network(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("must not touch the network with FTCOT_OFFLINE=1")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    monkeypatch.setenv("FTCOT_OFFLINE", "1")
    with pytest.raises(AquaTrainUnavailable, match="FTCOT_OFFLINE is set"):
        Task("aqua", default_data_dir()).example(5)


def _fake_aqua_train(first_question: str) -> bytes:
    row = (
        '{"question": "q%d ", "options": ["A)1", "B)2", "C)3", "D)4", "E) 5"], '
        '"rationale": " r%d\\n", "correct": "%s"}\n'
    )
    first = json.dumps({"question": first_question, "options": ["A)x"], "rationale": "", "correct": "A"}) + "\n"
    rest = "".join(row % (i, i, "ABCDE"[(i + 3) % 5]) for i in range(1, aqua_mod.AQUA_TRAIN_ROWS))
    return (first + rest).encode()


def test_aqua_train_download_verify_and_cache(tmp_path, monkeypatch):
    calls = []
    good = _fake_aqua_train("Two friends plan to walk along a 43-km trail, starting at opposite ends.")

    def fake_urlopen(url, timeout):
        calls.append((url, timeout))
        return io.BytesIO(good)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    task = Task("aqua", default_data_dir())
    train = task.split("train")
    assert calls == [(aqua_mod.AQUA_TRAIN_URL, aqua_mod.DOWNLOAD_TIMEOUT_S)]
    assert [e.sample_index for e in train] == task.split_indices("train")
    assert train[0].question == "q9 Answer choices: (A) 1, (B) 2, (C) 3, (D) 4, (E) 5." and train[0].rationale == "r9"
    assert task.complete and len(task.examples) == 97721
    assert all(e.sample_index == i for i, e in enumerate(task.examples))
    assert sha(records(task.examples[97467:])) == AQUA_TEST_SHA256
    assert task.examples[20].answer == "D"
    # Cached now: no second download (a new Task would parse the cached file; not repeated here, it is slow).
    assert aqua_mod.ensure_train() == aqua_mod.train_path() and aqua_mod.train_path().stat().st_size == len(good)
    assert len(calls) == 1


def test_aqua_train_wrong_file_rejected(tmp_path, monkeypatch):
    bad = _fake_aqua_train("Not the AQuA train set")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(bad))
    with pytest.raises(
        TaskDataError, match="the file downloaded from https://.* is not the official AQuA train.json"
    ) as e:
        Task("aqua", default_data_dir()).split("train")
    _one_line(e)
    assert not aqua_mod.train_path().exists()
    assert list(aqua_mod.train_path().parent.iterdir()) == []  # temp file removed


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_tasks_list(capsys):
    assert cli.main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["task", "name", "examples", "train", "test"]
    row = {line.split()[0]: line for line in lines[2:14]}
    assert list(row) == list(TASK_NAMES)
    assert row["gsm8k"].split()[2:5] == ["8792", "7473", "1319"]
    assert row["aqua"].split()[2:5] == ["97721*", "10000*", "254"]
    assert "needs" not in row["aqua"] and "downloaded from deepmind/AQuA on first use" in out
    assert row["strategy_qa"].split()[-2:] == ["yes", "yes"] and row["tracking_shuffled_objects"].split()[-2:] == [
        "no",
        "no",
    ]


def test_cli_tasks_show(capsys):
    assert cli.main(["tasks", "show", "date_understanding", "-n", "2", "--template", "ft_cot_token"]) == 0
    out = capsys.readouterr().out
    task = load_task("date_understanding")
    first, second = task.split("test")[:2]
    assert "split 'test' of 'default' has 111 examples; showing 2 from position 0" in out
    assert f"=== sample_index {first.sample_index} ===" in out and f"=== sample_index {second.sample_index} ===" in out
    assert repr(first.question + " ###") in out
    assert repr(f" <teacher rationale> --> {first.answer}") in out


def test_cli_tasks_show_all_templates_encoder_decoder(capsys):
    assert (
        cli.main(
            [
                "tasks",
                "show",
                "strategy_qa",
                "--split",
                "train",
                "-n",
                "1",
                "--template",
                "all",
                "--model-type",
                "encoder_decoder",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    ex = load_task("strategy_qa").split("train")[0]
    assert repr("question: " + ex.question) in out
    assert repr(f"{ex.rationale} --> {ex.answer}") in out
    assert "zs_cot" not in out and "--- fs_cot (encoder_decoder)" in out


def test_cli_errors(capsys):
    assert cli.main(["tasks", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ftcot tasks: error: unknown task 'nope'; expected one of: single_eq,") and err.count("\n") == 1
    )
    assert cli.main(["tasks", "show", "aqua", "--split", "train", "-n", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "the train split needs AQuA train.json" in captured.err
    assert cli.main(["tasks", "show", "coin_flip", "--template", "bogus"]) == 2
    assert "unknown template 'bogus'" in capsys.readouterr().err
