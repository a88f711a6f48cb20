"""The teacher cache's record: `TeacherRecord`, one teacher answer, and its codec to and from one
tf.train.Example (on-disk schema v1, documented for users in docs/cache_format.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ftcot_jax import tfrecord

SCHEMA_VERSION = 1
PROTOCOLS = ("completions", "chat", "batch", "reference")


@dataclass(frozen=True)
class TeacherRecord:
    task: str
    split: str
    sample_index: int
    completion_index: int
    teacher_model: str
    endpoint: str
    protocol: str  # "completions" | "chat" | "batch" | "reference"
    question: str
    gold_answer: str
    reasoning_prompt: str
    rationale: str
    reasoning_finish_reason: str
    answer_prompt: str
    answer_text: str
    finish_reason: str
    temperature: float
    seed: int  # -1 when none
    prompt_tokens: int
    completion_tokens: int
    timestamp: float  # unix seconds

    @property
    def key(self) -> tuple[int, int]:
        return (self.sample_index, self.completion_index)


_FIELDS = tuple((f.name, f.type) for f in fields(TeacherRecord))
STR_FIELDS = tuple(n for n, t in _FIELDS if t == "str")
INT_FIELDS = tuple(n for n, t in _FIELDS if t == "int")


# On-disk schema v1: feature name -> tf.train.Example list kind (every feature holds exactly one value).
FEATURES: dict[str, str] = {
    **{n: "bytes" for n in STR_FIELDS},
    **{n: "int64" for n in INT_FIELDS},
    "temperature": "float",
    "timestamp_us": "int64",
    "schema_version": "int64",
}


def record_to_example(rec: TeacherRecord) -> bytes:
    """Schema v1: str fields -> bytes_list (UTF-8), int fields -> int64_list, temperature -> float_list
    (float32), timestamp -> int64 `timestamp_us` (float32 cannot hold unix time), schema_version int64."""
    ex = tfrecord.Example()
    fmap = ex.features.feature
    for n in STR_FIELDS:
        fmap[n].bytes_list.value.append(getattr(rec, n).encode("utf-8"))
    for n in INT_FIELDS:
        fmap[n].int64_list.value.append(getattr(rec, n))
    fmap["temperature"].float_list.value.append(float(rec.temperature))
    fmap["timestamp_us"].int64_list.value.append(int(round(rec.timestamp * 1e6)))
    fmap["schema_version"].int64_list.value.append(SCHEMA_VERSION)
    return ex.SerializeToString()


def record_from_example(data: bytes, where: str = "record") -> TeacherRecord:
    try:
        fmap = tfrecord.Example.FromString(data).features.feature
    except Exception:
        raise ValueError(f"{where}: not a tf.train.Example") from None
    # Direct access by schema (twice as fast as a generic decode); any missing or mistyped feature
    # surfaces as an IndexError and is then named precisely.
    try:
        version = fmap["schema_version"].int64_list.value[0]
        if version != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version {version}; this version of ftcot reads {SCHEMA_VERSION}")
        kw = {n: fmap[n].bytes_list.value[0].decode("utf-8") for n in STR_FIELDS}
        kw.update({n: fmap[n].int64_list.value[0] for n in INT_FIELDS})
        # Temperatures are short decimals; undo the float32 rounding (0.699999988 -> 0.7).
        kw["temperature"] = round(fmap["temperature"].float_list.value[0], 6)
        kw["timestamp"] = fmap["timestamp_us"].int64_list.value[0] / 1e6
    except IndexError:
        feats = tfrecord.decode_example(data)
        kinds = {"bytes": bytes, "int64": int, "float": float}
        for name in sorted(FEATURES, key=lambda n: n != "schema_version"):
            kind = FEATURES[name]
            v = feats.get(name)
            if v is None or len(v) != 1 or not isinstance(v[0], kinds[kind]):
                raise ValueError(
                    f"{where}: no single-valued {kind} feature '{name}'; expected a teacher cache record"
                ) from None
        raise
    except UnicodeDecodeError:
        raise ValueError(f"{where}: a text feature is not UTF-8") from None
    return TeacherRecord(**kw)
