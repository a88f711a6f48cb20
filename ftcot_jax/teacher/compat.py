"""The reference repo's CompletionDataset JSON (`src/data/completion_dataset.py`) <-> our teacher cache.

Export writes `<out>/B_<teacher>__C_<completion_key>/D_<task>.json`, the path layout of the reference's
`saved/completion_data/`, so its loaders and notebooks read it. Import reads such a file, e.g. the paper's
published text-davinci-002 data (`B_text-davinci-002__C_zs_cot/D_<task>.json`), into a cache that
`ftcot curate` then turns into training samples.

Field mapping (one completion dict per record):
    sample_index, completion_index          <-> same
    question, answer                        <-> question, gold_answer
    reasoning_prompt, reasoning_completion  <-> reasoning_prompt, rationale
    reasoning_finish_reason                 <-> reasoning_finish_reason
    prompt, completion, finish_reason       <-> answer_prompt, answer_text, finish_reason
Our other fields travel in an extra "ftcot" dict per completion (ignored by the reference code), so an
export -> import round trip is exact. Files without it (the paper's) import with protocol "completions"
(the API the paper used), endpoint "import:<file name>", seed -1, zero token counts, the import time as
timestamp and the split looked up in the task's default split ("other" for indices in neither).
"""

from __future__ import annotations

import json
import re
import time

from ftcot_jax.files import write_json_atomic
from ftcot_jax.paths import AnyPath, as_path
from ftcot_jax.tasks import load_task
from ftcot_jax.teacher.cache import TeacherCache, slug
from ftcot_jax.teacher.records import TeacherRecord

_EXTRA = ("split", "endpoint", "protocol", "seed", "prompt_tokens", "completion_tokens", "timestamp")


def completion_key(temperature: float) -> str:
    """The reference's completion keys: "zs_cot" for greedy, "zs_cot_t70" for T=0.7."""
    return "zs_cot" if temperature == 0 else f"zs_cot_t{round(temperature * 100)}"


def temperature_from_key(key: str) -> float | None:
    if key == "zs_cot":
        return 0.0
    m = re.fullmatch(r"zs_cot_t(\d+)", key or "")
    return int(m.group(1)) / 100 if m else None


def export_path(out_dir, task: str, teacher_model: str, temperature: float) -> AnyPath:
    return as_path(out_dir) / f"B_{slug(teacher_model)}__C_{completion_key(temperature)}" / f"D_{task}.json"


def to_completion_dataset(cache: TeacherCache) -> dict:
    recs = cache.records()
    data: dict[str, list[dict]] = {}
    for r in recs:
        data.setdefault(str(r.sample_index), []).append(
            {
                "sample_index": r.sample_index,
                "completion_index": r.completion_index,
                "question": r.question,
                "answer": r.gold_answer,
                "reasoning_prompt": r.reasoning_prompt,
                "reasoning_completion": r.rationale,
                "reasoning_finish_reason": r.reasoning_finish_reason,
                "prompt": r.answer_prompt,
                "completion": r.answer_text,
                "finish_reason": r.finish_reason,
                "ftcot": {k: getattr(r, k) for k in _EXTRA},
            }
        )
    return {
        "metadata": {
            "base_model": cache.teacher_model,
            "dataset_key": cache.task,
            "completion_key": completion_key(cache.temperature),
            "finetune_key": None,
            "train_key": None,
            "epoch": None,
            "prediction_template": "zs_cot",
            "reasoning_temperature": cache.temperature,
        },
        "data": data,
    }


def export_cache(cache: TeacherCache, out_dir) -> tuple[AnyPath, int]:
    """Writes the cache as a CompletionDataset file; returns (path, number of completions)."""
    doc = to_completion_dataset(cache)
    n = sum(len(v) for v in doc["data"].values())
    if n == 0:
        raise ValueError(f"teacher cache {cache.path} holds no records to export")
    path = export_path(out_dir, cache.task, cache.teacher_model, cache.temperature)
    write_json_atomic(path, doc, indent=1)
    return path, n


def read_completion_dataset(path) -> dict:
    path = as_path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"completion file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON; expected a CompletionDataset file") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("metadata"), dict) and isinstance(doc.get("data"), dict)):
        raise ValueError(f"{path}: expected a CompletionDataset {{'metadata': {{...}}, 'data': {{...}}}}")
    return doc


_REQUIRED = (
    "sample_index",
    "completion_index",
    "question",
    "answer",
    "reasoning_prompt",
    "reasoning_completion",
    "prompt",
    "completion",
)


def _file_temperature(meta: dict, source: str) -> float | None:
    """The step-1 (rationale) temperature a file was written with. The reference's released files keep it in
    `metadata.parameters` (`reasoning_temperature`, else `temperature`); our exports at the top level; the
    completion key ("zs_cot", "zs_cot_t70") names it too."""
    params = meta.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"{source}: metadata.parameters is not a mapping; expected {{'temperature': ..., ...}}")
    for where, value in (
        ("reasoning_temperature", meta.get("reasoning_temperature")),
        ("parameters.reasoning_temperature", (params or {}).get("reasoning_temperature")),
        ("parameters.temperature", (params or {}).get("temperature")),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{source}: metadata.{where} is {value!r}; expected a temperature >= 0")
        return float(value)
    return temperature_from_key(meta.get("completion_key"))


def records_from_completion_dataset(
    doc: dict,
    *,
    source: str,
    task: str | None = None,
    teacher_model: str | None = None,
    temperature: float | None = None,
) -> tuple[str, str, float, list[TeacherRecord]]:
    """(task, teacher_model, temperature, records). Arguments override the file's metadata."""
    meta = doc["metadata"]
    task = task or meta.get("dataset_key")
    teacher_model = teacher_model or meta.get("base_model")
    if temperature is None:
        temperature = _file_temperature(meta, source)
    for name, value, arg in (
        ("dataset_key", task, "task"),
        ("base_model", teacher_model, "teacher_model"),
        ("reasoning temperature", temperature, "temperature"),
    ):
        if value is None:
            raise ValueError(f"{source}: metadata has no {name}; give the {arg} explicitly")
    if meta.get("prediction_template") not in (None, "zs_cot") or meta.get("train_key") is not None:
        raise ValueError(
            f"{source}: holds student completions (train_key={meta.get('train_key')!r}, "
            f"prediction_template={meta.get('prediction_template')!r}); expected teacher zs_cot data"
        )
    t = load_task(task)
    train, test = set(t.split_indices("train")), set(t.split_indices("test"))
    now = time.time()
    out = []
    for key, comps in doc["data"].items():
        if not isinstance(comps, list):
            raise ValueError(f"{source}: data[{key!r}] is not a list of completions")
        for j, c in enumerate(comps):
            missing = [f for f in _REQUIRED if not isinstance(c, dict) or f not in c]
            if missing:
                raise ValueError(
                    f"{source}: data[{key!r}][{j}] lacks {', '.join(missing)}; expected zs_cot teacher data"
                )
            for f in ("sample_index", "completion_index"):
                if isinstance(c[f], bool) or not isinstance(c[f], (int, str)) or not str(c[f]).isdigit():
                    raise ValueError(f"{source}: data[{key!r}][{j}].{f} is {c[f]!r}; expected an integer >= 0")
            for f in _REQUIRED[2:]:
                if c[f] is not None and not isinstance(c[f], str):
                    raise ValueError(f"{source}: data[{key!r}][{j}].{f} is a {type(c[f]).__name__}; expected text")
            if str(c["sample_index"]) != str(key):
                raise ValueError(f"{source}: data[{key!r}][{j}] has sample_index {c['sample_index']}")
            idx = int(c["sample_index"])
            extra = c.get("ftcot") or {}
            split = "train" if idx in train else "test" if idx in test else "other"
            out.append(
                TeacherRecord(
                    task=task,
                    split=extra.get("split", split),
                    sample_index=idx,
                    completion_index=int(c["completion_index"]),
                    teacher_model=teacher_model,
                    endpoint=extra.get("endpoint", f"import:{as_path(source).name}"),
                    protocol=extra.get("protocol", "completions"),
                    question=c["question"],
                    gold_answer=c["answer"],
                    reasoning_prompt=c["reasoning_prompt"],
                    rationale=c["reasoning_completion"] or "",
                    reasoning_finish_reason=c.get("reasoning_finish_reason") or "",
                    answer_prompt=c["prompt"],
                    answer_text=c["completion"] or "",
                    finish_reason=c.get("finish_reason") or "",
                    temperature=float(temperature),
                    seed=int(extra.get("seed", -1)),
                    prompt_tokens=int(extra.get("prompt_tokens", 0)),
                    completion_tokens=int(extra.get("completion_tokens", 0)),
                    timestamp=float(extra.get("timestamp", now)),
                )
            )
    out.sort(key=lambda r: r.key)
    return task, teacher_model, float(temperature), out


class TeacherMismatch(ValueError):
    """A completion file holds another task, teacher or temperature than the one expected."""


def completion_files(paths) -> list[AnyPath]:
    """The CompletionDataset files named by `paths`: files as given, and for a folder (the reference's
    `B_<teacher>__C_<key>/` layout) every `D_<task>.json` inside it, sorted."""
    out: list[AnyPath] = []
    for p in map(as_path, paths):
        if p.is_dir():
            found = sorted(p.glob("D_*.json"))
            if not found:
                raise FileNotFoundError(f"{p} holds no D_<task>.json files; expected a B_<teacher>__C_<key>/ folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"completion file {p} does not exist")
    return out


def task_file(source, task: str) -> AnyPath:
    """The file of `task` in `source`: a folder's D_<task>.json, or `source` itself when it is a file."""
    source = as_path(source)
    path = source / f"D_{task}.json" if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(f"teacher file {path} does not exist (expected the reference's D_<task>.json)")
    return path


def import_file(
    path,
    cache_root,
    *,
    task: str | None = None,
    teacher_model: str | None = None,
    temperature: float | None = None,
    expect: tuple[str, str, float] | None = None,
) -> tuple[TeacherCache, int, int]:
    """Appends the file's completions to the matching cache under `cache_root`; completions whose
    (sample_index, completion_index) is already cached are skipped. Returns (cache, added, skipped).
    `expect` = (task, teacher model, temperature) the file must hold (a run's released teacher); another one
    is a TeacherMismatch naming both, raised before anything is written."""
    doc = read_completion_dataset(path)
    task, teacher_model, temperature, recs = records_from_completion_dataset(
        doc, source=str(path), task=task, teacher_model=teacher_model, temperature=temperature
    )
    if expect is not None and (task, teacher_model, temperature) != expect:
        raise TeacherMismatch(
            f"{path} holds {task} by {teacher_model} at T={temperature:g}; expected {expect[0]} by {expect[1]} "
            f"at T={expect[2]:g}"
        )
    if not recs:
        raise ValueError(f"{path} holds no completions")
    cache = TeacherCache(cache_root, task=task, teacher_model=teacher_model, temperature=temperature)
    done = cache.done_keys()
    new = []
    for r in recs:
        if r.key not in done:
            new.append(r)
            done.add(r.key)
    with cache:
        added = cache.append_all(new)
    return cache, added, len(recs) - added
