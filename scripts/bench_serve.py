"""Benchmark `ftcot serve`: this tree's server against another tree's (e.g. the http.server-based one) on the
same small random GPT-2 (4 layers, d=128), with the same client (the official `openai` async client).

Per server, at 1, 8 and 50 concurrent clients: completions per second (non-streaming), and time to the first
streamed text and to the end of the stream (streaming); then a valid request served while 300 idle or stalled
TCP connections are held open (half connect and send nothing, half send part of a request's headers).

    git worktree add /tmp/serve_old 7956b41
    python scripts/bench_serve.py --old /tmp/serve_old --out docs/serve_bench.json

Each server runs as `python -m ftcot_jax serve DIR` with PYTHONPATH set to its tree. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/helpers/toy_tokenizers.py builds the tokenizer
MODEL_ID = "tiny"
PROMPTS = [f"Question {i}: how many apples are left?" for i in range(64)]


def tiny_model_dir(out: Path, width: int, layers: int) -> Path:
    """A random GPT-2 (`layers` x `width`) with a small byte-level BPE tokenizer, saved as an HF directory."""
    from ftcot_jax import models as ft_models
    from tests.helpers.toy_tokenizers import bpe_tokenizer  # the tokenizer of the server's tests

    hf_tok = bpe_tokenizer()
    eos = hf_tok.eos_token_id
    cfg = dict(
        model_type="gpt2", vocab_size=len(hf_tok), n_positions=512, n_embd=width, n_layer=layers, n_head=4,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    ft_models.save_hf(ft_models.from_config(cfg, seed=0), hf_tok, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tree: Path, model_dir: Path, port: int, args, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FTCOT_API_KEY"} | {"PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "ftcot_jax", "serve", str(model_dir), "--port", str(port)]
    cmd += ["--model-id", MODEL_ID, "--max-batch", str(args.max_batch), "--max-new-tokens-limit", str(args.max_tokens)]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server in {tree} exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server in {tree} did not start; see {log}")


async def completions(client, clients: int, per_client: int, max_tokens: int) -> dict:
    async def one_client(c: int):
        for k in range(per_client):
            p = PROMPTS[(c * per_client + k) % len(PROMPTS)]
            await client.completions.create(model=MODEL_ID, prompt=p, max_tokens=max_tokens, temperature=0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    dt = time.perf_counter() - t0
    return {"requests": clients * per_client, "seconds": round(dt, 3), "req_per_s": round(clients * per_client / dt, 2)}


async def streams(client, clients: int, max_tokens: int) -> list[tuple[float, float, int]]:
    async def one(c: int):
        t0 = time.perf_counter()
        first, chunks = None, 0
        stream = await client.completions.create(
            model=MODEL_ID, prompt=PROMPTS[c % len(PROMPTS)], max_tokens=max_tokens, temperature=0, stream=True
        )
        async for ev in stream:
            if ev.choices and ev.choices[0].text:
                chunks += 1
                first = first or time.perf_counter() - t0
        return first, time.perf_counter() - t0, chunks

    return await asyncio.gather(*(one(c) for c in range(clients)))


def stream_summary(got: list[tuple[float, float, int]]) -> dict:
    ttft, total = [g[0] for g in got], [g[1] for g in got]
    return {
        "streams": len(got),
        "ttft_median_s": round(statistics.median(ttft), 3),
        "ttft_max_s": round(max(ttft), 3),
        "stream_median_s": round(statistics.median(total), 3),
        "text_chunks_median": statistics.median(g[2] for g in got),
    }


async def with_stalled(client, port: int, n: int, max_tokens: int) -> dict:
    """A valid request while n connections are held open (half idle, half stuck in their headers)."""
    socks = []
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            break
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        socks.append(s)
    t0 = time.perf_counter()
    try:
        r = await asyncio.wait_for(
            client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=max_tokens, temperature=0), 60
        )
        served, error = bool(r.choices), None
    except Exception as e:  # noqa: BLE001 -- a failure is the measurement here
        served, error = False, f"{type(e).__name__}: {e}"[:200]
    dt = time.perf_counter() - t0
    for s in socks:
        s.close()
    return {"held_open": len(socks), "served": served, "seconds": round(dt, 3), "error": error}


def batches(port: int) -> int:
    """The server's decoder calls so far (GET /stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.load(r)["batches"]


async def bench(port: int, args) -> dict:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
    await completions(client, 8, 2, args.max_tokens)  # compile: the batch and generation buckets
    await streams(client, 8, args.max_tokens)
    out = {}
    for c in args.concurrency:  # the median run of `repeats` (the machine is shared: single runs are noisy)
        runs = []
        for _ in range(args.repeats):
            before = batches(port)
            runs.append(await completions(client, c, max(1, args.requests // c), args.max_tokens))
            runs[-1]["batches"] = batches(port) - before
        got = [g for _ in range(args.repeats) for g in await streams(client, c, args.max_tokens)]
        out[f"{c}_clients"] = {
            "completions": sorted(runs, key=lambda r: r["req_per_s"])[len(runs) // 2],
            "streaming": stream_summary(got),
        }
    out["stalled"] = await with_stalled(client, port, args.stalled, args.max_tokens)
    await client.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the other tree (a git worktree) to compare with")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "serve_bench.json")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 50])
    ap.add_argument("--requests", type=int, default=50, help="completions per concurrency level (split over clients)")
    ap.add_argument("--max-tokens", type=int, default=128)
    # d=32 x 2 layers (the tests' model) decodes 8 x 64 tokens in ~10 ms: too fast for streaming to show
    ap.add_argument("--width", type=int, default=128, help="the random GPT-2's width")
    ap.add_argument("--layers", type=int, default=4, help="the random GPT-2's layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--stalled", type=int, default=300)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model_dir(Path(tmp) / "tiny", args.width, args.layers)
        for name, tree in (("old", args.old.resolve()), ("new", REPO)):
            port = free_port()
            proc = start_server(tree, model_dir, port, args, Path(tmp) / f"{name}.log")
            try:
                results[name] = asyncio.run(bench(port, args))
            finally:
                proc.terminate()
                proc.wait(30)
    report = {
        "setup": {
            "model": f"random GPT-2, {args.layers} layers, d={args.width}, 400-token BPE",
            "repeats": args.repeats,
            "max_tokens": args.max_tokens,
            "max_batch": args.max_batch,
            "requests_per_level": args.requests,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
        **results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| clients | server | completions/s | stream: first text (median, max) | stream: end (median) | chunks |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        for name in results:
            r = results[name][f"{c}_clients"]
            s = r["streaming"]
            print(
                f"| {c} | {name} | {r['completions']['req_per_s']} | {s['ttft_median_s']} s, {s['ttft_max_s']} s "
                f"| {s['stream_median_s']} s | {s['text_chunks_median']} |"
            )
    for name in results:
        st = results[name]["stalled"]
        print(
            f"{name}: {st['held_open']} stalled connections held open: served={st['served']} in {st['seconds']} s"
            + (f" ({st['error']})" if st["error"] else "")
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
