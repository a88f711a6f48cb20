"""Ahead-of-time compilation of what `ftcot train` runs, for a TPU slice (or this host's devices), from the
same code: the mesh of the config (train.mesh.make_mesh) over the slice's devices, the student built from its
architecture alone (no weights: parameters and optimizer state stay abstract), the train step of
`train.step.setup` with its shardings, donation, accumulation, precision and remat, lowered with the batch
`Batcher` makes at `max_length`, and the evaluation's decode programs at `eval.batch_size`.

Each program is compiled by the compiler of the devices it targets; a program that does not fit the chips'
HBM fails in that compiler, and its report says so with the bytes it needed.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ftcot_jax.aot import hlo
from ftcot_jax.aot.shapes import student_hf_config
from ftcot_jax.aot.topology import Slice, slice_devices
from ftcot_jax.config import TrainConfig
from ftcot_jax.decode import causal, seq2seq
from ftcot_jax.decode.sampling import make_sampling
from ftcot_jax.models import cpu_xla
from ftcot_jax.models.api import count_params, max_positions
from ftcot_jax.train.batches import batch_shapes
from ftcot_jax.train.mesh import make_mesh
from ftcot_jax.train.step import TrainSetup, setup
from ftcot_jax.train.student import build_student


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """The only facts of a tokenizer a compile needs (no vocabulary files)."""

    eos_token_id: int
    pad_token_id: int | None


@dataclasses.dataclass
class Program:
    name: str  # train_step | decode_prefill | decode_loop
    fits: bool
    compile_s: float
    memory: hlo.Memory | None = None
    needed_bytes: int | None = None  # when it did not fit
    collectives: dict | None = None
    error: str | None = None  # one line, when it did not compile for another reason
    hlo_text: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass
class CompileReport:
    student: str
    family: str
    params: int
    devices: int
    platform: str
    mesh: dict
    batch: int
    grad_accum: int
    max_length: int
    precision: str
    remat: str
    param_bytes_per_chip: int
    opt_state_bytes_per_chip: int
    flops_per_step: float
    programs: list[Program]

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.programs)

    @property
    def peak_bytes(self) -> int:
        """The largest per-chip peak of the programs (the train step's, in practice); failed ones count what
        they needed."""
        peaks = [p.memory.peak for p in self.programs if p.memory is not None]
        peaks += [p.needed_bytes for p in self.programs if p.needed_bytes]
        return max(peaks, default=0)


def compile_student(cfg: TrainConfig) -> tuple[TrainConfig, object]:
    """(cfg whose student is its architecture alone, the student) for a compile: no weights are read."""
    hf = student_hf_config(cfg.student)
    st = dataclasses.replace(cfg.student, model_config=hf, from_scratch=True)
    cfg = dataclasses.replace(cfg, student=st)
    eos = hf.get("eos_token_id", 0)
    eos = eos[0] if isinstance(eos, list) else eos
    student = build_student(cfg, tokenizer=TokenIds(int(eos), hf.get("pad_token_id")))
    return cfg, student


def _per_chip_bytes(abstract_tree) -> int:
    """Bytes of the largest shard each chip holds, summed over the leaves (their shardings' shard shapes)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        n = 1
        for d in shape:
            n *= d
        total += n * jnp.dtype(leaf.dtype).itemsize
    return total


def model_flops_per_step(n_params: int, tokens: int) -> float:
    """6 x parameters x tokens: the dense-transformer training FLOPs the MFU uses (train/metrics.py)."""
    return 6.0 * n_params * tokens


def _compile(name: str, lower) -> Program:
    t = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001 - the compiler's errors are XlaRuntimeError/ValueError; the text decides
        text = str(e)
        dt = time.perf_counter() - t
        if hlo.is_out_of_memory(text):
            return Program(name, False, dt, needed_bytes=hlo.needed_bytes(text))
        first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)
        return Program(name, False, dt, error=f"{type(e).__name__}: {first[:300]}")
    dt = time.perf_counter() - t
    text = compiled.as_text()
    return Program(name, True, dt, hlo.memory_of(compiled), None, hlo.collectives(text), hlo_text=text)


def abstract_batch(st: TrainSetup, cfg: TrainConfig) -> dict:
    """The global batch `Batcher` makes at `max_length` (the largest shape a run meets), as sharded
    ShapeDtypeStructs."""
    micro = cfg.batch_size // cfg.grad_accum
    shapes = batch_shapes(st.student.model_type, cfg.grad_accum, micro, cfg.max_length)
    return {k: jax.ShapeDtypeStruct(shape, dt, sharding=st.batch_sharding) for k, (shape, dt) in shapes.items()}


def lower_train_step(st: TrainSetup, cfg: TrainConfig):
    """The train step lowered for abstract state and batch, under the setup's mesh (as training runs it)."""
    with jax.set_mesh(st.mesh):
        return st.step_fn.lower(st.abstract_state(), abstract_batch(st, cfg))


def _decode_programs(st: TrainSetup, cfg: TrainConfig, platform: str) -> list[Program]:
    """The evaluation's decode: the model as `Trainer.evaluate` merges it (training shardings), at
    eval.batch_size rows, prompts up to max_length (within the model's positions), eval.max_new_tokens."""
    student = st.student
    abstract_params = st.abstract_state().params
    model = nnx.merge(student.graphdef, abstract_params)
    graphdef, state = nnx.split(model)
    B = cfg.eval.batch_size
    new_bucket = causal.bucket(cfg.eval.max_new_tokens, causal.MIN_NEW_BUCKET)
    limit = max_positions(student.config)
    prompt = cfg.max_length if limit is None else max(1, min(cfg.max_length, limit - new_bucket))
    P = causal.prompt_bucket(prompt)
    rep = jax.sharding.NamedSharding(st.mesh, jax.sharding.PartitionSpec())

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

    s = jax.tree.map(lambda a: sds(a.shape, a.dtype), jax.eval_shape(lambda: make_sampling(None, 1.0, 0, 1.0, [0], 0)))
    chunk = cpu_xla.decode_chunk(platform)
    programs = []
    with jax.set_mesh(st.mesh):
        if student.is_causal_lm:
            args = (sds((B, P), jnp.int32), sds((B, P), jnp.int32), sds((B,), jnp.bool_), s)
            prefill = functools.partial(causal._prefill, graphdef, new_bucket=new_bucket, greedy=True)
            programs.append(_compile("decode_prefill", lambda: causal._prefill.lower(
                graphdef, state, *args, new_bucket=new_bucket, greedy=True)))  # fmt: skip
            loop = jax.eval_shape(lambda st_, *a: prefill(st_, *a), state, *args)
            loop = jax.tree.map(lambda a: sds(a.shape, a.dtype), loop)
            step = causal.loop_fn(None)
            programs.append(_compile("decode_loop", lambda: step.lower(
                graphdef, state, loop, sds((), jnp.int32), s, greedy=True, chunk=chunk)))  # fmt: skip
        else:
            start_args = (sds((B, P), jnp.int32), sds((B, P), jnp.int32), sds((B,), jnp.bool_))
            ids = (sds((), jnp.int32), sds((), jnp.int32))
            programs.append(_compile("decode_prefill", lambda: seq2seq._start.lower(
                graphdef, state, *start_args, *ids, new_bucket=new_bucket)))  # fmt: skip
            loop, cross = jax.eval_shape(
                functools.partial(seq2seq._start, graphdef, new_bucket=new_bucket), state, *start_args, *ids
            )
            loop, cross = (jax.tree.map(lambda a: sds(a.shape, a.dtype), t) for t in (loop, cross))
            until = sds((), jnp.int32)
            programs.append(_compile("decode_loop", lambda: seq2seq._continue.lower(
                graphdef, state, loop, cross, start_args[1], until, s, greedy=True, chunk=chunk)))  # fmt: skip
    return programs


def compile_config(
    cfg: TrainConfig, sl: Slice | None = None, *, decode: bool = True, keep_hlo: bool = False
) -> CompileReport:
    """Compile `cfg`'s train step (and its evaluation decode) for the slice `sl` (None: this host's devices)."""
    devices = slice_devices(sl) if sl is not None else jax.devices()
    mesh = make_mesh(cfg, devices=devices, num_slices=sl.num_slices if sl is not None else 1)
    cfg, student = compile_student(cfg)
    st = setup(cfg, student=student, mesh=mesh)
    abstract = st.abstract_state()
    programs = [_compile("train_step", lambda: lower_train_step(st, cfg))]
    platform = devices[0].platform
    if decode and programs[0].fits:
        programs += _decode_programs(st, cfg, platform)
    if not keep_hlo:
        for p in programs:
            p.hlo_text = None
    tokens = cfg.batch_size * cfg.max_length
    return CompileReport(
        student=cfg.student.model or student.family.name,
        family=student.family.name,
        params=count_params(student.abstract_params),
        devices=mesh.size,
        platform=platform,
        mesh=dict(mesh.shape),
        batch=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        max_length=cfg.max_length,
        precision=cfg.precision,
        remat=getattr(cfg, "remat", "none"),
        param_bytes_per_chip=_per_chip_bytes(abstract.params),
        opt_state_bytes_per_chip=_per_chip_bytes(abstract.opt_state),
        flops_per_step=model_flops_per_step(count_params(student.abstract_params), tokens),
        programs=programs,
    )


# ----------------------------------------------------------------------------- what a user reads


MEMORY_KEYS = "mesh.fsdp (shard params and optimizer state), batch_size, grad_accum, train.remat, precision"


def capacity_of(sl: Slice | None) -> int | None:
    return None if sl is None else sl.chip.hbm_bytes


def step_time_bound_s(report: CompileReport, sl: Slice | None) -> float | None:
    """Model FLOPs / (the chips' peak bf16 rate): no step can be faster; not a prediction of its time."""
    if sl is None:
        return None
    return report.flops_per_step / (sl.chip.peak_bf16_flops * report.devices)


def fits_within(report: CompileReport, sl: Slice | None) -> bool:
    cap = capacity_of(sl)
    return report.fits and (cap is None or report.peak_bytes <= cap)


def to_json(report: CompileReport, sl: Slice | None) -> dict:
    collectives: dict[str, dict[str, int]] = {}
    for p in report.programs:
        for kind, c in (p.collectives or {}).items():
            slot = collectives.setdefault(kind, {"count": 0, "bytes": 0})
            slot["count"] += c["count"]
            slot["bytes"] += c["bytes"]
    return {
        "topology": None if sl is None else sl.topology,
        "topology_name": None if sl is None else sl.name,
        "num_slices": 1 if sl is None else sl.num_slices,
        "devices": report.devices,
        "platform": report.platform,
        "student": report.student,
        "family": report.family,
        "params": report.params,
        "mesh": report.mesh,
        "batch_size": report.batch,
        "grad_accum": report.grad_accum,
        "max_length": report.max_length,
        "precision": report.precision,
        "remat": report.remat,
        "fits": fits_within(report, sl),
        "peak_hbm_bytes_per_chip": report.peak_bytes,
        "hbm_capacity_bytes_per_chip": capacity_of(sl),
        "param_bytes_per_chip": report.param_bytes_per_chip,
        "opt_state_bytes_per_chip": report.opt_state_bytes_per_chip,
        "collectives": collectives,
        "flops_per_step": report.flops_per_step,
        "step_time_lower_bound_s": step_time_bound_s(report, sl),
        "programs": [
            {
                "name": p.name,
                "fits": p.fits,
                "compile_s": round(p.compile_s, 2),
                "peak_bytes": None if p.memory is None else p.memory.peak,
                "temp_bytes": None if p.memory is None else p.memory.temporaries,
                "needed_bytes": p.needed_bytes,
                "error": p.error,
                "collectives": p.collectives,
            }
            for p in report.programs
        ],
    }


def does_not_fit_line(report: CompileReport, sl: Slice | None) -> str:
    where = "this host" if sl is None else f"{sl.name} ({sl.topology} x {sl.num_slices})"
    failed = next((p for p in report.programs if p.error), None)
    if failed is not None:
        return f"{report.student} on {where}: {failed.name} did not compile: {failed.error}"
    cap = capacity_of(sl)
    cap_text = "" if cap is None else f" of {cap / 2**30:.2f} GiB per chip"
    return (
        f"{report.student} does not fit {where}: needs {report.peak_bytes / 2**30:.2f} GiB per chip{cap_text} "
        f"(mesh {report.mesh}, batch {report.batch} x {report.max_length}); to reduce memory set {MEMORY_KEYS}"
    )


def max_batch(cfg: TrainConfig, sl: Slice | None, *, limit: int = 4096) -> tuple[int, list[tuple[int, bool]]]:
    """The largest global batch (a multiple of data shards x grad_accum) whose train step fits, by doubling then
    bisection over compiles. Returns (batch or 0 when none fits, [(batch, fits) tried])."""
    devices = slice_devices(sl) if sl is not None else jax.devices()
    mesh = make_mesh(cfg, devices=devices, num_slices=sl.num_slices if sl is not None else 1)
    unit = mesh.shape["data"] * mesh.shape["fsdp"] * cfg.grad_accum
    tried: list[tuple[int, bool]] = []

    def fits(n_units: int) -> bool:
        b = n_units * unit
        r = compile_config(dataclasses.replace(cfg, batch_size=b), sl, decode=False)
        ok = fits_within(r, sl)
        tried.append((b, ok))
        return ok

    lo, hi = 0, 1
    while hi * unit <= limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi * unit > limit:
        return lo * unit, tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * unit, tried
