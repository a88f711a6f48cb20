"""AQuA's train part: fetched once from its canonical public source into the user cache.

The bundled files hold only AQuA's 254-row official test set (reference sample_index 97467..97720).
The reference's train split is a fixed 10,000-row subsample of the official 97,467-row `train.json`
(deepmind/AQuA, Apache-2.0), which is too large to bundle. It is downloaded on first use to
`$FTCOT_CACHE/data/AQuA/train.json` (default cache: ~/.cache/ftcot_jax), checked (row count and two
rows printed by the reference notebook), then used like a bundled file. Offline, or with
FTCOT_OFFLINE=1, asking for it raises a one-line `AquaTrainUnavailable` error; putting the file at
that path by hand works too. The URL can be overridden with FTCOT_AQUA_TRAIN_URL (e.g. a mirror).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from ftcot_jax.tasks.preprocess import Row, TaskDataError, aqua_rows

AQUA_TRAIN_URL = "https://raw.githubusercontent.com/deepmind/AQuA/master/train.json"
AQUA_TRAIN_ROWS = 97467
# Rows the reference's `notebooks/old/Data Preparation.ipynb` printed from the unified file: a cheap identity check.
_FIRST_QUESTION_PREFIX = "Two friends plan to walk along a 43-km trail"
_ROW20_ANSWER = "D"
DOWNLOAD_TIMEOUT_S = 30.0


class AquaTrainUnavailable(TaskDataError):
    """AQuA's train.json is not cached and could not be fetched (offline or download failure)."""


def cache_dir() -> Path:
    """User cache root: $FTCOT_CACHE, else ~/.cache/ftcot_jax."""
    return Path(os.environ.get("FTCOT_CACHE") or Path.home() / ".cache" / "ftcot_jax")


def train_path() -> Path:
    return cache_dir() / "data" / "AQuA" / "train.json"


def _download(url: str, dest: Path, timeout: float) -> list[Row]:
    """Stream `url` to a temp file next to `dest`, verify it, then rename it into place atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".train.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        rows = _verify(Path(tmp), source=url)
        os.replace(tmp, dest)
        return rows
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _verify(path: Path, source: str) -> list[Row]:
    """Identity check on rows 0 and 20 (cheap, first), then the full parse with its row-count check."""
    wrong = TaskDataError(
        f"task 'aqua': the file downloaded from {source} is not the official AQuA train.json (row 0 should start"
        f" with '{_FIRST_QUESTION_PREFIX}', row 20 should have answer '{_ROW20_ANSWER}')"
    )
    with open(path, encoding="utf-8", errors="replace") as f:
        head = [f.readline() for _ in range(21)]
    try:
        first, row20 = json.loads(head[0]), json.loads(head[20])
        ok = str(first["question"]).startswith(_FIRST_QUESTION_PREFIX) and row20["correct"] == _ROW20_ANSWER
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise wrong
    return aqua_rows(path, AQUA_TRAIN_ROWS)  # raises on bad JSON or a wrong row count


def _fetch(timeout: float) -> list[Row]:
    path = train_path()
    url = os.environ.get("FTCOT_AQUA_TRAIN_URL") or AQUA_TRAIN_URL
    hint = f"connect to the internet once, or save the official 97,467-line train.json as {path}"
    if os.environ.get("FTCOT_OFFLINE", "") not in ("", "0"):
        raise AquaTrainUnavailable(
            f"task 'aqua': the train split needs AQuA train.json, which is not bundled and FTCOT_OFFLINE is set; {hint}"
        )
    try:
        return _download(url, path, timeout)
    except TaskDataError:
        raise
    except Exception as e:  # URLError, timeouts, HTTP errors, disk errors: all mean "not available"
        reason = str(getattr(e, "reason", "") or e).replace("\n", " ")
        raise AquaTrainUnavailable(
            f"task 'aqua': the train split needs AQuA train.json, which is not bundled and could not be"
            f" downloaded from {url} ({type(e).__name__}: {reason}); {hint}"
        ) from None


def ensure_train(timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Path of the cached train.json, downloading it first if needed (one-line error when impossible)."""
    if not train_path().exists():
        _fetch(timeout)
    return train_path()


def load_train_rows(timeout: float = DOWNLOAD_TIMEOUT_S) -> list[Row]:
    """The 97,467 train rows (sample_index 0..97466), fetching the file if needed."""
    path = train_path()
    return aqua_rows(path, AQUA_TRAIN_ROWS) if path.exists() else _fetch(timeout)
