"""Fine-tune samples: the `FinetuneSample` record that curation writes and the trainer reads, sample files
(TFRecord, one tf.train.Example per sample), and samples built from a task's own gold data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ftcot_jax.files import write_bytes_atomic
from ftcot_jax.paths import as_path
from ftcot_jax.prompts import METHOD_TEMPLATE
from ftcot_jax.tasks import load_task
from ftcot_jax.tfrecord import RecordCorruptError, decode_example, encode_example, frame, read_records


@dataclass(frozen=True)
class FinetuneSample:
    task: str
    sample_index: int
    completion_index: int
    question: str
    answer: str
    rationale: str  # "" for vanilla fine-tuning
    method: str  # "ft" | "ft_cot" | "step_by_step"


_SAMPLE_FIELDS = tuple((f.name, f.type) for f in fields(FinetuneSample))
_METHODS = tuple(METHOD_TEMPLATE)  # ft, ft_cot, step_by_step


def _sample_to_features(s: FinetuneSample) -> dict:
    if s.method not in _METHODS:
        raise ValueError(f"FinetuneSample.method must be one of {_METHODS}, got {s.method!r}")
    return {name: getattr(s, name) for name, _ in _SAMPLE_FIELDS}


def write_samples(path, samples: Iterable[FinetuneSample]) -> int:
    """Writes (overwrites) a sample file atomically (files.py: a reader never sees half a file); returns the
    number of samples written."""
    frames = [frame(encode_example(_sample_to_features(s))) for s in samples]
    write_bytes_atomic(path, b"".join(frames))
    return len(frames)


def read_samples(path) -> list[FinetuneSample]:
    """All samples of a sample file. A missing file raises FileNotFoundError; an empty, corrupt or
    non-sample file raises ValueError naming the file and the problem."""
    path = as_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file {path} does not exist (write it with `ftcot curate`)")
    out = []
    try:
        for i, data in enumerate(read_records(path, on_corrupt="raise")):
            try:
                feats = decode_example(data)
            except Exception:
                raise ValueError(f"sample file {path}: record {i} is not a tf.train.Example") from None
            out.append(_features_to_sample(path, i, feats))
    except RecordCorruptError as e:
        raise ValueError(f"sample file {e}") from None
    if not out:
        raise ValueError(f"sample file {path} holds no samples; expected records written by `ftcot curate`")
    return out


def _features_to_sample(path: Path, i: int, feats: dict) -> FinetuneSample:
    kwargs = {}
    for name, typ in _SAMPLE_FIELDS:
        vals = feats.get(name)
        if vals is None or len(vals) != 1:
            raise ValueError(
                f"sample file {path}: record {i} has no single-valued feature '{name}'; expected a FinetuneSample"
            )
        v = vals[0]
        if typ == "int":
            if not isinstance(v, int):
                raise ValueError(f"sample file {path}: record {i} feature '{name}' is not int64")
            kwargs[name] = v
        else:
            if not isinstance(v, bytes):
                raise ValueError(f"sample file {path}: record {i} feature '{name}' is not bytes")
            kwargs[name] = v.decode("utf-8")
    if kwargs["method"] not in _METHODS:
        raise ValueError(f"sample file {path}: record {i} has method {kwargs['method']!r}; expected one of {_METHODS}")
    return FinetuneSample(**kwargs)


def gold_samples(task: str, method: str, split_name: str = "default"):
    """Fine-tune samples built from the dataset itself: gold answers (ft) or gold rationales (ft_cot,
    step_by_step).

    Stands in for teacher rationales until a teacher has run; same FinetuneSample records.
    """
    if method not in METHOD_TEMPLATE:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHOD_TEMPLATE)}")
    t = load_task(task)
    if method != "ft" and not t.has_rationale:
        raise ValueError(
            f"task '{task}' has no gold rationales, so {method} samples cannot be built from the "
            "dataset; use teacher samples (ftcot curate) or method 'ft'"
        )
    out = []
    for ex in t.split("train", split_name):
        rationale = "" if method == "ft" else (ex.rationale or "").strip()
        if method != "ft" and not rationale:
            raise ValueError(f"task '{task}' train example {ex.sample_index} has an empty gold rationale")
        out.append(
            FinetuneSample(
                task=task,
                sample_index=ex.sample_index,
                completion_index=0,
                question=ex.question,
                answer=ex.answer,
                rationale=rationale,
                method=method,
            )
        )
    if not out:
        raise ValueError(f"task '{task}' has no train examples in split '{split_name}'")
    return out


def write_gold_samples(task: str, method: str, path: str | Path, split_name: str = "default") -> int:
    """The task's gold samples (`gold_samples`) written to a sample file (replacing it)."""
    return write_samples(path, gold_samples(task, method, split_name))


def load_samples(paths: Sequence[str | Path]):
    """Read and concatenate sample files; checks they agree on task and method."""
    if not paths:
        raise ValueError("no sample files given")
    samples = []
    for p in paths:
        if not as_path(p).is_file():
            raise FileNotFoundError(f"sample file {p} does not exist")
        got = read_samples(p)
        if not got:
            raise ValueError(f"sample file {p} contains no samples")
        samples.extend(got)
    for key in ("task", "method"):
        values = sorted({getattr(s, key) for s in samples})
        if len(values) > 1:
            raise ValueError(f"sample files mix several {key}s ({', '.join(values)}); train one at a time")
    return samples
