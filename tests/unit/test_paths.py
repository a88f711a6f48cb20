"""paths.py without a store: local paths stay pathlib paths, URLs become epath paths, bad schemes are refused.
(Reads and writes on gs://: tests/integration/test_gcs.py, against a GCS API server.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcot_jax.files import open_append, write_json_atomic
from ftcot_jax.paths import as_path, check_reachable, is_remote, replace_dir


def test_local_paths_stay_pathlib(tmp_path):
    for p in ("runs/x", str(tmp_path), tmp_path, "/abs/dir"):
        got = as_path(p)
        assert type(got) is type(Path()) and str(got) == str(p)
        assert not is_remote(got) and not is_remote(p)
    check_reachable(str(tmp_path / "not" / "there"))  # local: nothing to check


def test_urls_keep_their_scheme():
    p = as_path("gs://my-bucket/runs/x")
    assert not isinstance(p, Path) and str(p) == "gs://my-bucket/runs/x"  # not the local folder "gs:"
    assert is_remote(p) and is_remote("gs://my-bucket/runs/x")
    assert str(p / "checkpoints" / "2") == "gs://my-bucket/runs/x/checkpoints/2" and p.name == "x"
    assert as_path(p) is p


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match=r"^ftp://host/x: unsupported URL scheme ftp://"):
        as_path("ftp://host/x")


def test_local_writes_unchanged(tmp_path):
    out = write_json_atomic(tmp_path / "a" / "r.json", {"x": 1})
    assert out == tmp_path / "a" / "r.json" and out.read_text() == '{\n  "x": 1\n}\n'
    f = open_append(tmp_path / "log.jsonl")
    f.write("one\n")
    assert (tmp_path / "log.jsonl").read_text() == "one\n"  # line-buffered: readable while open
    f.close()
    (tmp_path / "t.tmp").mkdir()
    (tmp_path / "t.tmp" / "w").write_text("new")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "old").write_text("old")
    replace_dir(tmp_path / "t.tmp", tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["w"] and not (tmp_path / "t.tmp").exists()


def test_no_network_is_one_line_at_once(monkeypatch):
    pytest.importorskip("gcsfs")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=rf"^gs://b/runs/x cannot be reached: no connection to 127.0.0.1:{port} "):
        check_reachable("gs://b/runs/x")
