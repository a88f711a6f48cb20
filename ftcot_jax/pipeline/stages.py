"""Stage bookkeeping of `ftcot run`: which stages are current, and the hashes that decide it.

A stage is skipped when its record in stages.json carries the same hash and its outputs exist. The
hash covers the part of the configuration the stage reads plus the hashes of the stages it reads from,
so changing a train key reruns train, evaluate and report but not teach or curate.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ftcot_jax.config import EvalSection, RunConfig, TrainConfig, to_dict
from ftcot_jax.files import write_json_atomic
from ftcot_jax.paths import is_remote, rmtree
from ftcot_jax.teacher import reference
from ftcot_jax.teacher.compat import task_file

# Train fields that change how a run is carried out, not what it computes (left out of the train hash).
NON_SEMANTIC_TRAIN_FIELDS = (
    "run_dir",
    "remat",  # where activations are kept: the same values either way
    "log_every_steps",
    "async_checkpointing",
    "keep_last",
    "keep_best",
    "checkpoint_every_steps",
    "distributed",
    "export",
)

UNFINISHED = "<unfinished>"  # an output path that never exists: the stage started but has not finished


def config_hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def section_dict(obj) -> dict:
    """A config section as a dict ({} for an absent optional section)."""
    return to_dict(obj) if obj is not None else {}


def teacher_hash(cfg: RunConfig, task: str, kind: str) -> str:
    t = section_dict(cfg.teacher)
    for k in ("concurrency", "timeout", "max_attempts", "cache_dir"):
        t.pop(k)  # how to ask, not what is asked
    if cfg.teacher.import_from:  # a released teacher: what is taught is the file's content, wherever it lies
        path = task_file(t.pop("import_from"), task)
        t["imported"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if cfg.teacher.model == reference.MODEL:  # a program: what it writes is its version
        t["program_version"] = reference.VERSION
    d = max(cfg.curate.diverse_samples) if kind == "diverse" else 1
    return config_hash("teach", task, cfg.split_name, kind, d, t)


def train_hash(cfg: RunConfig, train_cfg: TrainConfig, curate_h: str) -> str:
    """Covers the resolved TrainConfig (minus how-to-run keys), the student section and the samples' curation."""
    d = to_dict(train_cfg)
    for k in NON_SEMANTIC_TRAIN_FIELDS:
        d.pop(k, None)
    d["samples"] = [Path(s).name for s in d["samples"]]  # the file's content is covered by curate_h
    if d.get("method") != "step_by_step":
        d.pop("label_weight", None)  # read by step_by_step only: other methods' runs stay current
    default_eval = to_dict(EvalSection())
    for k in EvalSection.SAMPLING_KEYS:  # at their defaults, runs made before these keys stay current
        if d["eval"].get(k) == default_eval[k]:
            d["eval"].pop(k, None)
    return config_hash("train", d, section_dict(cfg.student), curate_h)


def _rel(path, root: Path) -> str:
    """Outputs under the run dir are stored relative (the run dir can be moved), others absolute."""
    if is_remote(root) or is_remote(path):  # URLs: no symlinks to resolve
        prefix = str(root).rstrip("/") + "/"
        return str(path)[len(prefix) :] if str(path).startswith(prefix) else str(path)
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


class StageState:
    """stages.json: {stage id: {hash, outputs, seconds, finished}}; rewritten atomically after each stage."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        self.run_dir = run_dir
        self.path = run_dir / "stages.json"
        self.log = log
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.events: list[tuple[str, str]] = []  # (stage id, "ran" | "skipped")

    def current(self, sid: str, h: str) -> bool:
        rec = self.data.get(sid)
        return bool(rec and rec.get("hash") == h and all((self.run_dir / o).exists() for o in rec.get("outputs", [])))

    def run(self, sid: str, h: str, fn: Callable[[], list[Path]], *, clean: list[Path] = ()) -> bool:
        """Run `fn` unless the stage is current; returns True when it ran.

        Before running, the stage is recorded with its hash and no outputs: if it is interrupted, a rerun
        with the same hash keeps what it left (the trainer resumes from its checkpoints); a rerun with
        another hash, or with no record at all, deletes `clean` first (outputs of another configuration
        are never resumed or mixed in)."""
        if self.current(sid, h):
            self.events.append((sid, "skipped"))
            self.log(f"[{sid}] skipped (outputs current, hash {h})")
            return False
        old = self.data.get(sid)
        if old is None or old.get("hash") != h:
            for p in clean:
                if p.exists():
                    self.log(f"[{sid}] removing {p} (made by another configuration)")
                    rmtree(p) if p.is_dir() else p.unlink()
        resumed = old is not None and old.get("hash") == h
        self.data[sid] = {"hash": h, "outputs": [UNFINISHED], "started": time.time()}
        self._write()
        t0 = time.time()
        self.log(f"[{sid}] {'resuming' if resumed else 'running'} (hash {h})")
        outputs = fn()
        dt = time.time() - t0
        self.data[sid] = {
            "hash": h,
            "outputs": [_rel(o, self.run_dir) for o in outputs],
            "seconds": round(dt, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write()
        self.events.append((sid, "ran"))
        self.log(f"[{sid}] done in {dt:.1f}s")
        return True

    def _write(self):
        write_json_atomic(self.path, self.data, sort_keys=True)
