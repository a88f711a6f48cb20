"""A real GCS JSON API server on 127.0.0.1 (gcp-storage-emulator, in memory) for the gs:// tests.

Each client library finds it through its own environment variable: gcsfs (what etils.epath uses for gs://
without TensorFlow) reads STORAGE_EMULATOR_HOST, tensorstore (what orbax writes arrays with) reads
TENSORSTORE_GCS_HTTP_URL and takes GOOGLE_AUTH_TOKEN_FOR_TESTING as its credentials. gcsfs's bucket-type
probe (a gRPC control-plane call the emulator does not serve) is switched off.

One gap of the emulator is filled here, as real GCS behaves: a media download carries the object's
`x-goog-generation` header (tensorstore's OCDBT manifest writes are conditional on the generation it read;
without the header it reads generation 0 and refuses: "Malformed StorageGeneration").
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass


@dataclass
class Emulator:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict  # the variables that point every client at this server

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def missing_packages() -> list[str]:
    """Without importing them (gcsfs reads its settings from the environment once, when imported)."""
    return [pkg for mod, pkg in _PACKAGES if importlib.util.find_spec(mod) is None]


_PACKAGES = (("gcp_storage_emulator", "gcp-storage-emulator"), ("gcsfs", "gcsfs"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(bucket: str = "ftcot-test", timeout_s: float = 30.0) -> Emulator:
    """Starts the emulator in a subprocess on a free port with `bucket` created; waits until it answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, str(port), bucket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the GCS emulator did not start on {url}") from None
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    return Emulator(proc, url, bucket, env)


def create_bucket(emulator: Emulator, name: str) -> None:
    """A new bucket (buckets.insert of the JSON API)."""
    req = urllib.request.Request(
        f"{emulator.url}/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()


def use(emulator: Emulator) -> dict:
    """Points this process's clients at `emulator`; returns the previous values for `restore`."""
    old = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    return old


def restore(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _serve(port: int, bucket: str) -> None:
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # noqa: BLE001  (not found: the handler already answered 404)
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    objects.download = download_with_generation  # before the server module builds its route table
    from gcp_storage_emulator.server import create_server

    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
