"""The student trainer: one jitted, sharded train step over a (data, fsdp, tensor) mesh.

    from ftcot_jax.config import load_config
    from ftcot_jax.train import train
    result = train(load_config("run.yaml", ["optim.lr=1e-4"]))

Flow: mesh -> abstract model (jax.eval_shape) -> shardings from the logical-axis rules -> jitted init
with out_shardings (or the loaded weights placed shard by shard) -> optax AdamW state placed like the
params -> `train_step` = jax.jit(in/out shardings, donated state) with gradient accumulation inside
(lax.scan, normalised once by the total count of label tokens) -> per-epoch greedy evaluation on the
test split -> orbax checkpoints (async, atomic, exact resume) -> HF export.

The model is used functionally: `graphdef, params = nnx.split(model)`, params a plain dict of arrays,
and `nnx.merge(graphdef, params)` inside the traced functions (no nnx.jit in the hot loop).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ftcot_jax import batching
from ftcot_jax import samples as sample_files
from ftcot_jax import head_loss
from ftcot_jax.checkpoint import Checkpoints, abstract_like
from ftcot_jax.config import TrainConfig, save_config, to_dict
from ftcot_jax.metrics import MetricsLogger, mfu, peak_flops_per_device
from ftcot_jax.models import sharding as sharding_lib
from ftcot_jax.models.layers import Packing

BATCH_AXES = ("data", "fsdp")


# ----------------------------------------------------------------------------- distributed + mesh


_distributed_done = False


def maybe_initialize_distributed(cfg: TrainConfig) -> None:
    """jax.distributed.initialize() once, before anything touches the devices (every host runs this)."""
    global _distributed_done
    d = cfg.distributed
    if not d.enabled or _distributed_done:
        return
    kwargs: dict[str, Any] = {}
    if d.coordinator_address:
        kwargs["coordinator_address"] = d.coordinator_address
    if d.num_processes:
        kwargs["num_processes"] = d.num_processes
    if d.process_id >= 0:
        kwargs["process_id"] = d.process_id
    if d.local_device_ids:
        kwargs["local_device_ids"] = list(d.local_device_ids)
    jax.distributed.initialize(**kwargs)
    _distributed_done = True


def make_mesh(cfg: TrainConfig):
    data, fsdp, tensor = cfg.mesh.resolve(jax.device_count())
    return sharding_lib.make_mesh(data, fsdp, tensor, devices=jax.devices()[: data * fsdp * tensor])


def batch_sharding(mesh) -> NamedSharding:
    """(accum, micro, length) arrays: micro-batch rows over the data-parallel axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


# ----------------------------------------------------------------------------- student


@dataclasses.dataclass
class Student:
    """Everything the trainer needs about the model, independent of where the weights came from."""

    family: Any                      # the family module (gpt2, llama, t5)
    config: Any                      # the family Config
    tokenizer: Any
    graphdef: Any                    # nnx graph of the model with the compute dtype
    abstract_params: dict            # ShapeDtypeStructs (pure dict)
    param_logical: Any               # nnx.State with logical axis metadata (for the sharding rules)
    host_params: dict | None         # loaded weights (numpy/jax), or None for a random init
    make_model: Callable[[], nnx.Module]

    @property
    def model_type(self) -> str:
        return "encoder_decoder" if self.config.is_encoder_decoder else "decoder"

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params)))


def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    if not name_or_path:
        raise ValueError("a from-scratch student needs `tokenizer` (or `model`) naming a tokenizer directory")
    return AutoTokenizer.from_pretrained(name_or_path)


def build_student(cfg: TrainConfig, *, model: nnx.Module | None = None, tokenizer=None) -> Student:
    """Resolve the student from the config (or from objects given to the Python API)."""
    from ftcot_jax import models

    compute = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    host_params = None
    if model is not None:
        config = model.config
        if not cfg.from_scratch:
            host_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        if tokenizer is None:
            raise ValueError("train(model=...) also needs tokenizer=...")
    elif cfg.from_scratch:
        hf = cfg.model_config
        if hf is None:
            if not cfg.model:
                raise ValueError("from_scratch needs `model_config` (an HF config dict) or `model` (a dir with config.json)")
            path = Path(cfg.model) / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (from_scratch reads the architecture from it)")
            hf = json.loads(path.read_text())
        config = models.config_from_hf(hf)
        tokenizer = tokenizer or _load_tokenizer(cfg.tokenizer or cfg.model)
    else:
        if not cfg.model:
            raise ValueError("no student given: set `model` (HF dir, hub id, smollm2-135m-instruct or .gguf)")
        model, loaded_tok = models.load(cfg.model)
        config = model.config
        tokenizer = tokenizer or loaded_tok
        host_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    family = models.family_for(config.to_hf_config()["model_type"])

    def make_model():
        return family.Model(config, dtype=compute, rngs=nnx.Rngs(cfg.seed))

    abstract = nnx.eval_shape(make_model)
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{family.__name__}: the model has non-Param state ({list(rest.keys())}); the trainer "
                         "expects parameters only")
    abstract_params = nnx.to_pure_dict(param_state)
    if host_params is not None:
        got = jax.tree.map(lambda x: tuple(x.shape), host_params)
        want = jax.tree.map(lambda x: tuple(x.shape), abstract_params)
        if got != want:
            raise ValueError("loaded weights do not match the model built from their config")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    return Student(family, config, tokenizer, graphdef, abstract_params, param_state, host_params, make_model)


def param_shardings(student: Student, mesh) -> dict:
    return nnx.to_pure_dict(sharding_lib.logical_to_sharding(student.param_logical, mesh))


def init_params(student: Student, shardings: dict) -> dict:
    """Random init compiled with out_shardings (each device builds only its shards), or the loaded
    weights placed shard by shard."""
    if student.host_params is not None:
        return jax.device_put(student.host_params, shardings)
    return _jitted_init(student, shardings)()


def _jitted_init(student: Student, shardings: dict):
    key = id(shardings)
    if key not in student.__dict__.setdefault("_inits", {}):
        def init():
            _, params, _ = nnx.split(student.make_model(), nnx.Param, ...)
            return nnx.to_pure_dict(params)

        student._inits[key] = (shardings, jax.jit(init, out_shardings=shardings))
    return student._inits[key][1]


# ----------------------------------------------------------------------------- optimizer


def lr_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    o = cfg.optim
    warm = min(o.warmup_steps, total_steps)
    end = o.lr * o.min_lr_ratio
    rest = max(total_steps - warm, 1)
    if o.decay == "none":
        main = optax.constant_schedule(o.lr)
    elif o.decay == "linear":
        main = optax.linear_schedule(o.lr, end, rest)
    else:
        main = optax.cosine_decay_schedule(o.lr, rest, alpha=o.min_lr_ratio)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warm), main], [warm])


def make_optimizer(cfg: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """torch.optim.AdamW semantics: decoupled weight decay on every parameter (the reference passes
    model.parameters() without groups), eps outside the sqrt."""
    o = cfg.optim
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    if o.clip_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.clip_grad_norm), adamw)
    return adamw


def opt_state_shardings(tx, abstract_params: dict, p_shardings: dict, mesh):
    """Optimizer moments sharded like their params; counters replicated."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shardings,
                                 transform_non_params=lambda _: replicated)


# ----------------------------------------------------------------------------- loss and step


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _batch_shards() -> int:
    """Data-parallel shards of the current mesh (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def _uses_dropout(student: Student, use_dropout: bool) -> bool:
    return use_dropout and _accepts(student.family.Model.__call__, "dropout_rng")


def uses_label_head(student: Student, use_dropout: bool, head_chunk: int) -> bool:
    """Whether the step runs the LM head on label tokens only (decoder students whose `features` take the
    dropout key when dropout is on; their head itself has no dropout)."""
    return (student.model_type == "decoder" and head_chunk > 0 and hasattr(student.family.Model, "head_VxD")
            and (not _uses_dropout(student, use_dropout) or _accepts(student.family.Model.features, "dropout_rng")))


def make_loss_fn(student: Student, use_dropout: bool, head_chunk: int = 0):
    graphdef = student.graphdef
    decoder = student.model_type == "decoder"
    dropout = _uses_dropout(student, use_dropout)
    label_head = uses_label_head(student, use_dropout, head_chunk)

    def loss_fn(params, mb, rng):
        """(sum of token cross-entropies over label tokens, number of label tokens), both fp32."""
        model = nnx.merge(graphdef, params)
        extra = {"dropout_rng": rng} if dropout else {}
        if label_head:  # the head only where the loss is (head_loss.py); same value as the full logits
            if "pack_index" in mb:  # padding dropped: hidden states of the needed tokens only, [G, N, D]
                packing = Packing(mb["pack_index"], mb["unpack_index"], *mb["input_ids"].shape)
                x_GxNxD, _ = model.features(mb["input_ids"], attention_mask_BxL=mb["attention_mask"],
                                            positions_BxL=mb["positions"], packing=packing, **extra)
                return head_loss.label_cross_entropy(x_GxNxD, model.head_VxD(), packing.pack(mb["targets"]),
                                                     packing.pack(mb["loss_mask"]), groups=packing.G,
                                                     chunk=head_chunk)
            x_BxLxD, _ = model.features(mb["input_ids"], attention_mask_BxL=mb["attention_mask"],
                                        positions_BxL=mb["positions"], **extra)
            return head_loss.label_cross_entropy(x_BxLxD, model.head_VxD(), mb["targets"], mb["loss_mask"],
                                                 groups=_batch_shards(), chunk=head_chunk)
        if decoder:
            logits_BxLxV = model(mb["input_ids"], attention_mask_BxL=mb["attention_mask"],
                                 positions_BxL=mb["positions"], **extra)
        else:
            logits_BxLxV = model(mb["input_ids"], attention_mask_BxL=mb["attention_mask"],
                                 decoder_input_ids_BxT=mb["decoder_input_ids"],
                                 decoder_attention_mask_BxT=mb["decoder_attention_mask"], **extra)
        nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), mb["targets"])
        w_BxL = mb["loss_mask"]
        return jnp.sum(nll_BxL * w_BxL), jnp.sum(w_BxL)

    return loss_fn


def make_train_step(student: Student, tx, schedule, *, use_dropout: bool, p_shardings=None, head_chunk: int = 0):
    """step(state, batch) -> (state, metrics). batch arrays are (accum, micro, length)."""
    loss_fn = make_loss_fn(student, use_dropout, head_chunk)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, batch):
        params = state["params"]
        base = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def micro(carry, xs):
            g_acc, loss_acc, n_acc = carry
            mb, i = xs
            (loss_sum, n_tok), g = grad_fn(params, mb, jax.random.fold_in(base, i))
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            if p_shardings is not None:
                g_acc = jax.lax.with_sharding_constraint(g_acc, p_shardings)
            return (g_acc, loss_acc + loss_sum, n_acc + n_tok), None

        accum = jax.tree.leaves(batch)[0].shape[0]
        if accum == 1:  # no loop: lets XLA fuse the step as one program
            (loss_sum, n_tok), g_sum = grad_fn(params, jax.tree.map(lambda x: x[0], batch),
                                               jax.random.fold_in(base, 0))
        else:
            zeros = jax.tree.map(jnp.zeros_like, params)
            (g_sum, loss_sum, n_tok), _ = jax.lax.scan(
                micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum)))
        # One normalisation by the label tokens of the whole batch (not a mean of micro-batch means).
        denom = jnp.maximum(n_tok, 1.0)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = dict(params=new_params, opt_state=opt_state, step=state["step"] + 1, rng=state["rng"])
        # positions the step computed on: all of them (encoder + decoder for T5), or the packed tokens
        computed = (batch["pack_index"].size if "pack_index" in batch
                    else sum(batch[k].size for k in ("input_ids", "decoder_input_ids") if k in batch))
        metrics = dict(loss=loss_sum / denom, grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                       label_tokens=n_tok, computed_tokens=jnp.float32(computed))
        return new_state, metrics

    return step


@dataclasses.dataclass
class Setup:
    """A compiled-ready training setup: used by `train`, the tests and the benchmark."""

    cfg: TrainConfig
    mesh: Any
    student: Student
    tx: Any
    schedule: Any
    state_shardings: dict
    batch_sharding: NamedSharding
    step_fn: Callable   # jitted (state, batch) -> (state, metrics), state donated
    pack_multiple: int = 0  # > 0: put_batch adds the padding-free layout's indices (layers.Packing)

    def init_state(self) -> dict:
        with jax.set_mesh(self.mesh):
            params = init_params(self.student, self.state_shardings["params"])
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
        rep = self.state_shardings["step"]
        return dict(params=params, opt_state=opt_state, step=jax.device_put(jnp.int32(0), rep),
                    rng=jax.device_put(jax.random.key_data(jax.random.key(self.cfg.seed)), rep))

    def abstract_state(self) -> dict:
        abstract = dict(params=self.student.abstract_params,
                        opt_state=jax.eval_shape(self.tx.init, self.student.abstract_params),
                        step=jax.ShapeDtypeStruct((), jnp.int32),
                        rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))))
        return abstract_like(abstract, self.state_shardings)

    def put_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host-local rows -> global arrays (jax.make_array_from_process_local_data); with packing, plus
        the gather indices of the padding-free layout (computed here: they depend on the data shards)."""
        n = jax.process_count()
        if self.pack_multiple:  # set by `setup` for decoder students with the label-only head only
            local = dict(local, **self._packing_indices(local, n))
        out = {}
        for k, v in local.items():
            global_shape = (v.shape[0], v.shape[1] * n) + v.shape[2:]
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, v, global_shape)
        return out

    def _packing_indices(self, local: dict[str, np.ndarray], n_hosts: int) -> dict[str, np.ndarray]:
        shards = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES if a in self.mesh.shape]))
        if shards % n_hosts:
            return {}
        groups = shards // n_hosts  # this host's data shards
        mask, weights = local["attention_mask"], local["loss_mask"]
        size = None
        if n_hosts > 1:  # every host must build the same global shape: agree on the largest N
            from jax.experimental import multihost_utils
            mine = batching.packed_size(mask, weights, groups, self.pack_multiple)
            size = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
        idx = batching.packing_indices(mask, weights, groups, self.pack_multiple, size=size)
        return {} if idx is None else {"pack_index": idx[0], "unpack_index": idx[1]}

    def compile_ahead(self, state, batches) -> tuple[Callable, int]:
        """Compile the step for every batch shape in `batches` before any is run (the padding-free layout
        gives a few); for benchmarks, which time steps, not compiles. Returns (step(state, fed) -> (state,
        metrics) dispatching on fed's shapes, number of shapes). Call both inside `jax.set_mesh(self.mesh)`."""
        def key(fed):
            return tuple((k, tuple(v.shape)) for k, v in sorted(fed.items()))

        compiled = {}
        for b in batches:
            fed = self.put_batch(b)
            if key(fed) not in compiled:
                compiled[key(fed)] = self.step_fn.lower(state, fed).compile()
        return (lambda state, fed: compiled[key(fed)](state, fed)), len(compiled)

    def run_step(self, state, batch):
        with jax.set_mesh(self.mesh):
            return self.step_fn(state, self.put_batch(batch))


def setup(cfg: TrainConfig, *, student: Student | None = None, model=None, tokenizer=None,
          total_steps: int = 1, mesh=None) -> Setup:
    mesh = mesh if mesh is not None else make_mesh(cfg)
    student = student or build_student(cfg, model=model, tokenizer=tokenizer)
    schedule = lr_schedule(cfg, total_steps)
    tx = make_optimizer(cfg, schedule)
    p_sh = param_shardings(student, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = dict(params=p_sh, opt_state=opt_state_shardings(tx, student.abstract_params, p_sh, mesh),
                    step=rep, rng=rep)
    b_sh = batch_sharding(mesh)
    step = make_train_step(student, tx, schedule, use_dropout=cfg.dropout, p_shardings=p_sh,
                           head_chunk=cfg.head_chunk)
    step_fn = jax.jit(step, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, rep), donate_argnums=(0,))
    packs = uses_label_head(student, cfg.dropout, cfg.head_chunk) and _accepts(student.family.Model.features,
                                                                              "packing")
    return Setup(cfg, mesh, student, tx, schedule, state_sh, b_sh, step_fn,
                 pack_multiple=cfg.pack_multiple if packs else 0)


# ----------------------------------------------------------------------------- evaluation


def evaluate(student: Student, params, examples, *, task: str, template: str, batch_size: int,
             max_new_tokens: int, mesh=None) -> tuple[dict, list[dict]]:
    """Greedy-decode the prompts of `examples` and score them with the reference evaluator."""
    from ftcot_jax import decode, prompts, scoring

    model = nnx.merge(student.graphdef, params)
    prompts = [prompts.finetune_input(template, student.model_type, ex.question) for ex in examples]
    ctx = jax.set_mesh(mesh) if mesh is not None else _nullcontext()
    with ctx:
        gens = decode.generate(model, student.tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    records = []
    for ex, prompt, g in zip(examples, prompts, gens):
        r = scoring.evaluate_completion(task, g.text, ex.answer, template, g.finish_reason)
        records.append({"sample_index": ex.sample_index, "question": ex.question, "answer": ex.answer,
                        "prompt": prompt, "completion": g.text, "finish_reason": g.finish_reason, **r})
    return scoring.summarize(records), records


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: dict[int, float]          # step -> loss of the steps this call ran
    history: list[dict]               # per-epoch eval summaries (whole run, resumes included)
    best: dict | None                 # reference protocol: best test accuracy over epochs (spec 4.4)
    last: dict | None                 # last evaluated epoch
    truncated_prompts: int
    truncated_labels: int
    resumed_from: int | None


def _resolve_samples(cfg: TrainConfig, run_dir: Path):
    if cfg.samples:
        return sample_files.load_samples(list(cfg.samples))
    if not cfg.task:
        raise ValueError("no training data: set `samples` (fine-tune sample files) or `task` (to build them "
                         "from the dataset's gold answers/rationales)")
    path = run_dir / "samples" / f"gold_{cfg.task}_{cfg.method}.tfrecord"
    if jax.process_index() == 0:
        n = sample_files.write_gold_samples(cfg.task, cfg.method, path, cfg.split_name)
        print(f"built {n} {cfg.method} samples for {cfg.task} from the dataset -> {path}", flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("gold samples written")
    return sample_files.load_samples([path])


def _eval_examples(cfg: TrainConfig, task: str):
    from ftcot_jax.tasks import load_task

    examples = load_task(task).split("test", cfg.split_name)
    return examples[: cfg.eval_limit] if cfg.eval_limit else examples


def _gather_params(params):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def train(cfg: TrainConfig, *, model: nnx.Module | None = None, tokenizer=None, samples=None,
          eval_examples=None, require_checkpoint: bool = False, on_step: Callable | None = None) -> TrainResult:
    """Fine-tune a student; resumes automatically from the newest checkpoint in `cfg.run_dir`.

    Python-API extras: `model`/`tokenizer` objects instead of `cfg.model`, `samples` (FinetuneSample
    list) instead of files, `eval_examples` (objects with sample_index/question/answer) instead of the
    task's test split. `require_checkpoint` (CLI --resume) makes a missing checkpoint an error.
    """
    maybe_initialize_distributed(cfg)
    if not cfg.run_dir:
        raise ValueError("run_dir is not set")
    run_dir = Path(cfg.run_dir)
    is_main = jax.process_index() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # --- checks that need no data first: mesh vs devices, then the student
    mesh = make_mesh(cfg)
    student = build_student(cfg, model=model, tokenizer=tokenizer)

    # --- data
    samples = samples if samples is not None else _resolve_samples(cfg, run_dir)
    if not samples:
        raise ValueError("no fine-tune samples to train on")
    task = samples[0].task
    template = batching.METHOD_TEMPLATE[samples[0].method]
    tok = student.tokenizer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoded = batching.encode_samples(samples, tok, model_type=student.model_type, max_length=cfg.max_length)
    for w in caught:
        if is_main:
            print(f"warning: {w.message}", flush=True)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    start_id = getattr(student.config, "decoder_start_token_id", None)
    batcher = batching.Batcher(encoded, cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.bucket, pad_id,
                               pad_id if start_id is None else start_id, jax.process_index(), jax.process_count())
    steps_per_epoch = batcher.steps_per_epoch
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    # --- mesh, state, step
    st = setup(cfg, student=student, total_steps=total_steps, mesh=mesh)
    dp = st.mesh.shape["data"] * st.mesh.shape["fsdp"]
    if batcher.micro % dp:
        raise ValueError(f"micro-batch of {batcher.micro} rows (batch_size {cfg.batch_size} / grad_accum "
                         f"{cfg.grad_accum}) is not divisible by the data-parallel mesh size {dp} "
                         f"(data={st.mesh.shape['data']} x fsdp={st.mesh.shape['fsdp']})")
    ckpt = Checkpoints(run_dir / "checkpoints", keep_last=cfg.keep_last, keep_best=cfg.keep_best,
                       async_save=cfg.async_checkpointing)
    latest = ckpt.latest_step()
    history: list[dict] = []
    if latest is not None:
        state, pos = ckpt.restore(latest, st.abstract_state())
        epoch, index, history = pos["epoch"], pos["batch"], pos.get("history", [])
        if pos.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(f"checkpoint in {run_dir} was made with {pos['steps_per_epoch']} batches per epoch, "
                             f"this config gives {steps_per_epoch}: resume needs the same data and batch size")
        if is_main:
            print(f"resuming from step {latest} (epoch {epoch}, batch {index}) in {run_dir}", flush=True)
    else:
        if require_checkpoint:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        state = st.init_state()
        epoch, index = 0, 0
    step = int(jax.device_get(state["step"]))
    if is_main:
        save_config(cfg, run_dir / "config.json")

    evals = eval_examples
    if cfg.eval_every_epochs and evals is None:
        evals = _eval_examples(cfg, task)

    peak, peak_src = peak_flops_per_device(dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32)
    peak_total = peak * st.mesh.size
    logger = MetricsLogger(run_dir, total_steps=total_steps, initial_step=step)
    logger.write(f"student {student.family.__name__.split('.')[-1]} ({student.n_params / 1e6:.1f}M params), "
                 f"{len(encoded)} samples, {steps_per_epoch} steps/epoch, {total_steps} steps, mesh "
                 f"{dict(st.mesh.shape)}, peak {peak / 1e12:.3g} TFLOP/s/device ({peak_src})")
    if encoded.truncated_prompts or encoded.truncated_labels:
        logger.log(step, {"truncated_prompts": encoded.truncated_prompts,
                          "truncated_labels": encoded.truncated_labels, "samples": len(encoded)}, kind="data")

    losses: dict[int, float] = {}
    pending = None  # (step, metrics on device, tokens) of the last step: fetched after the next dispatch
    t_last = None

    def flush(p):
        nonlocal t_last
        s, m, ntok = p
        m = jax.device_get(m)  # waits for step s only; step s+1 is already queued
        now = time.perf_counter()
        losses[s] = float(m["loss"])
        if not math.isfinite(losses[s]):
            raise FloatingPointError(f"loss is {losses[s]} at step {s}")
        out = {k: float(v) for k, v in m.items()}
        if t_last is not None:  # the first step includes compilation: no throughput for it
            dt = now - t_last
            out["step_time"] = dt
            out["tokens_per_s"] = ntok / dt
            out["mfu"] = mfu(student.n_params, ntok / dt, peak_total)
        t_last = now
        if s % cfg.log_every_steps == 0 or s == total_steps:
            logger.log(s, out)
        logger.progress(s, loss=out["loss"], **({"tok/s": out["tokens_per_s"]} if "tokens_per_s" in out else {}))
        if on_step is not None:
            on_step(s, out)

    def position(e, i):
        return {"epoch": e, "batch": i, "step": step, "steps_per_epoch": steps_per_epoch, "history": history}

    resumed_from = latest
    last_saved = latest

    def save(metrics=None):
        nonlocal last_saved
        ckpt.save(step, state, position(epoch, index), metrics=metrics)
        last_saved = step

    try:
        while step < total_steps and epoch < cfg.epochs:
            local = batcher.batch(epoch, index)
            ntok = batcher.n_tokens(epoch, index)
            state, m = st.run_step(state, local)
            step += 1
            index += 1
            if pending is not None:
                flush(pending)
            pending = (step, m, ntok)
            epoch_end = index == steps_per_epoch
            if epoch_end:
                flush(pending)
                pending = None
                e_done = epoch
                epoch, index = epoch + 1, 0
                metrics = None
                if cfg.eval_every_epochs and (e_done + 1) % cfg.eval_every_epochs == 0 and evals:
                    summary, records = evaluate(student, state["params"], evals, task=task, template=template,
                                                batch_size=cfg.eval_batch_size,
                                                max_new_tokens=cfg.eval_max_new_tokens, mesh=st.mesh)
                    summary = {"epoch": e_done, "step": step, **summary}
                    history.append(summary)
                    metrics = {"accuracy": float(summary["accuracy"])}
                    if is_main:
                        _write_predictions(run_dir, e_done, records)
                    logger.log(step, {k: v for k, v in summary.items() if k not in ("epoch", "step")}, kind="eval")
                    logger.write(f"epoch {e_done}: accuracy {summary['accuracy']:.4f} (n={summary['n']})")
                    t_last = None  # evaluation time is not training throughput
                save(metrics)
            elif cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
                save()
        if pending is not None:
            flush(pending)
            pending = None
        if last_saved != step:  # stopped by max_steps between saves
            save()
        ckpt.wait()
    finally:
        logger.close()
        ckpt.close()

    best = max(history, key=lambda h: h["accuracy"]) if history else None
    last = history[-1] if history else None
    result = TrainResult(run_dir, step, losses, history, best, last, encoded.truncated_prompts,
                         encoded.truncated_labels, resumed_from)
    done = step >= total_steps or epoch >= cfg.epochs
    if done and cfg.export:
        host_params = _gather_params(state["params"])
        if is_main:
            from ftcot_jax import models

            models.save_hf(nnx.merge(student.graphdef, host_params), student.tokenizer, run_dir / "export")
    if is_main:
        (run_dir / "results.json").write_text(json.dumps(
            {"task": task, "method": cfg.method, "steps": step, "best_over_epochs": best, "last_epoch": last,
             "history": history, "truncated_prompts": encoded.truncated_prompts,
             "truncated_labels": encoded.truncated_labels, "samples": len(encoded),
             "config": to_dict(cfg)}, indent=2) + "\n")
    return result


def _write_predictions(run_dir: Path, epoch: int, records: list[dict]):
    out = run_dir / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"epoch_{epoch:03d}.jsonl.tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")
    tmp.replace(out / f"epoch_{epoch:03d}.jsonl")
