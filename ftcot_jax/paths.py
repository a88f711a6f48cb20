"""Paths that may be local or on object storage: the one home of path handling.

Every path the project reads or writes (run directories, checkpoints, metrics, predictions, reports, sample
files, the teacher cache, exported models) goes through `as_path`:

- a local path stays a `pathlib.Path`, so local behaviour is exactly that of pathlib;
- a URL (`gs://bucket/dir`, `s3://...`) becomes an `etils.epath.Path`, which has the same methods (open,
  read/write, exists, glob without `**`, iterdir, mkdir, unlink, rmtree) and talks to the store through
  fsspec (gcsfs for `gs://`; TensorFlow's gfile instead when TensorFlow is importable). orbax uses the
  same epath paths and writes arrays to `gs://` itself through tensorstore.

`pathlib.Path("gs://b/x")` would silently turn a URL into a local folder `gs:`; code must call `as_path` on
the user's string before anything else. Object stores have no append and no rename: an object write is
atomic (the whole object or nothing), which is how files.py and the teacher cache write there.

`check_reachable(url)` runs before any work starts, so a missing bucket, missing credentials or no network is
one line naming the URL instead of a failure after the first epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
from etils import epath

AnyPath = Path | epath.Path
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
REMOTE_SCHEMES = ("gs", "s3")
REACH_TIMEOUT_S = 60.0  # how long check_reachable waits for the store to answer


def scheme(p) -> str | None:
    """The URL scheme of `p` ('gs', 's3', ...), None for a local path."""
    m = _URL.match(str(p)) if isinstance(p, str) else None
    if m is None and isinstance(p, epath.Path) and not isinstance(p, Path):
        m = _URL.match(os.fspath(p))
    return m.group(1).lower() if m else None


def is_remote(p) -> bool:
    """True for an object-store URL (gs://, s3://) or a path made from one by `as_path`."""
    return scheme(p) is not None


def as_path(p: str | os.PathLike) -> AnyPath:
    """`pathlib.Path` for a local path, `epath.Path` for gs:// and s3:// URLs; anything else with `://` is
    refused (it would become a local folder named after the scheme)."""
    if isinstance(p, Path):
        return p
    if isinstance(p, epath.Path):
        return p if is_remote(p) else Path(os.fspath(p))
    s = os.fspath(p)
    sch = scheme(s)
    if sch is None:
        return Path(s)
    if sch not in REMOTE_SCHEMES:
        raise ValueError(f"{s}: unsupported URL scheme {sch}://; expected a local path, gs://... or s3://...")
    _require({"gs": "gcsfs", "s3": "s3fs"}[sch], s)
    # Other processes (hosts, reruns) change a run directory: a cached listing would hide their objects, or
    # show ones they deleted. fsspec reads this when epath first makes the store's filesystem.
    fsspec.config.conf.setdefault(sch, {}).setdefault("use_listings_cache", False)
    return epath.Path(s)


def _require(module: str, url: str) -> None:
    try:
        __import__(module)
    except ImportError:
        how = "pip install 'ftcot-jax[gcs]'" if module == "gcsfs" else f"pip install {module}"
        raise ValueError(f"{url}: reading and writing this store needs the `{module}` package: {how}") from None


def rmtree(path: AnyPath) -> None:
    """Deletes a directory tree (a prefix of objects on a store)."""
    if isinstance(path, Path):
        shutil.rmtree(path)
    else:
        path.rmtree()


def upload_tree(local_dir: Path, dest: AnyPath) -> None:
    """Copies the files under `local_dir` to `dest` (a store prefix or a local directory), each file whole."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(local_dir.rglob("*")):
        if f.is_file():
            target = dest / f.relative_to(local_dir).as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())


def download_tree(src: AnyPath, local_dir: Path, *, skip_suffixes: tuple[str, ...] = ()) -> Path:
    """Copies the files of the directory `src` (a store prefix) into `local_dir`, each file whole, except
    those ending in `skip_suffixes`; returns `local_dir`."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory")
    local_dir.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_dir():
            download_tree(p, local_dir / p.name, skip_suffixes=skip_suffixes)
        elif not p.name.endswith(skip_suffixes):
            (local_dir / p.name).write_bytes(p.read_bytes())
    return local_dir


def replace_dir(tmp: AnyPath, out: AnyPath) -> None:
    """Puts the finished directory `tmp` in place of `out`: a rename locally; on a store, where a prefix
    cannot be renamed, its objects are copied one by one and `tmp` is deleted (callers mark completion
    separately, e.g. with a stage record written after this returns)."""
    if out.exists():
        rmtree(out)
    if isinstance(tmp, Path) and isinstance(out, Path):
        tmp.replace(out)
        return
    _copy_tree(tmp, out)
    rmtree(tmp)


def _copy_tree(src: AnyPath, dst: AnyPath) -> None:
    for p in src.iterdir():
        if p.is_dir():
            _copy_tree(p, dst / p.name)
        else:
            (dst / p.name).write_bytes(p.read_bytes())


def _endpoint(sch: str | None) -> tuple[str, int] | None:
    """(host, port) the store's client connects to: for gs://, $STORAGE_EMULATOR_HOST or Google's API."""
    if sch != "gs":
        return None
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator and emulator != "default":
        parts = urlsplit(emulator if "://" in emulator else "http://" + emulator)
        return parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80)
    return "storage.googleapis.com", 443


def writer_id() -> str:
    """A name part no other writing process (on any host) shares: host, pid and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname())[:32] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def check_reachable(url: str | os.PathLike, *, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """For a store URL, checks that its bucket exists and that an object can be written and deleted under it
    (credentials, network, permissions); raises ValueError naming the URL otherwise. Local paths pass."""
    if not is_remote(url):
        return
    url = os.fspath(url)
    path = as_path(url)
    endpoint = _endpoint(scheme(url))
    if endpoint is not None:  # no network: say so at once (the store's client would retry for minutes)
        try:
            socket.create_connection(endpoint, timeout=min(timeout_s, 10.0)).close()
        except OSError as e:
            raise ValueError(
                f"{url} cannot be reached: no connection to {endpoint[0]}:{endpoint[1]} ({e.strerror or e}); "
                "check the network (docs/multihost.md#cloud-storage)"
            ) from None
    result: dict = {}

    def probe():
        try:
            bucket = epath.Path(f"{scheme(url)}://{url.split('://', 1)[1].split('/', 1)[0]}")
            if not bucket.exists():
                result["error"] = "no such bucket (or no permission to see it)"
                return
            obj = path / f".ftcot-reach-{writer_id()}"
            obj.write_bytes(b"")
            obj.unlink()
            result["ok"] = True
        except Exception as e:  # noqa: BLE001  (any failure of the store client is reported, in one line)
            first = (str(e).strip().splitlines() or [""])[0][:300]
            result["error"] = f"{type(e).__name__}: {first}" if first else type(e).__name__

    t = threading.Thread(target=probe, daemon=True)  # a hung client must not hold the process
    t.start()
    t.join(timeout_s)
    if "ok" in result:
        return
    reason = result.get("error", f"no answer within {timeout_s:g} s")
    raise ValueError(
        f"{url} cannot be reached: {reason}; check the bucket name, the network and the credentials "
        "(docs/multihost.md#cloud-storage)"
    )
