"""One training step: AdamW with its schedule, the loss, and the jitted, sharded, donated step function.

`setup` builds a `TrainSetup`: the optimizer, the state shardings (optimizer moments sharded like their
params), and `train_step` = jax.jit(in/out shardings, donated state) with gradient accumulation inside
(lax.scan, normalised once by the total count of label tokens). The model is used functionally: params are a
plain dict of arrays and `nnx.merge(graphdef, params)` runs inside the traced functions (no nnx.jit in the
hot loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ftcot_jax.config import TrainConfig
from ftcot_jax.models.layers import Packing
from ftcot_jax.train import batches, head_loss
from ftcot_jax.train.checkpoint import abstract_like
from ftcot_jax.train.mesh import batch_sharding, data_shards, make_mesh
from ftcot_jax.train.student import Student, build_student, make_param_init, param_shardings

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
    return optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, p_shardings, transform_non_params=lambda _: replicated
    )


# ----------------------------------------------------------------------------- loss and step


def _current_data_shards() -> int:
    """Data-parallel shards of the mesh being traced under (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else data_shards(mesh)


def uses_label_head(student: Student, head_chunk: int) -> bool:
    """Whether the step runs the LM head on label tokens only (head_loss.py): decoder-only students
    (models.api.CausalLM: `features` + `head_VxD`), unless `head_chunk` is 0."""
    return head_chunk > 0 and student.is_causal_lm


def make_loss_fn(student: Student, use_dropout: bool, head_chunk: int = 0):
    """loss_fn(params, micro_batch, rng) -> (sum of token cross-entropies over label tokens, number of label
    tokens), both fp32. With `use_dropout` the model's own dropout runs, keyed by `rng`."""
    graphdef = student.graphdef
    decoder = student.model_type == "decoder"
    label_head = uses_label_head(student, head_chunk)

    def loss_fn(params, mb, rng):
        model = nnx.merge(graphdef, params)
        extra = {"dropout_rng": rng} if use_dropout else {}
        if label_head:  # the head only where the loss is (head_loss.py); same value as the full logits
            if "pack_index" in mb:  # padding dropped: hidden states of the needed tokens only, [G, N, D]
                packing = Packing(mb["pack_index"], mb["unpack_index"], *mb["input_ids"].shape)
                x_GxNxD, _ = model.features(
                    mb["input_ids"],
                    attention_mask_BxL=mb["attention_mask"],
                    positions_BxL=mb["positions"],
                    packing=packing,
                    **extra,
                )
                return head_loss.label_cross_entropy(
                    x_GxNxD,
                    model.head_VxD(),
                    packing.pack(mb["targets"]),
                    packing.pack(mb["loss_mask"]),
                    groups=packing.P,
                    chunk=head_chunk,
                )
            x_BxLxD, _ = model.features(
                mb["input_ids"], attention_mask_BxL=mb["attention_mask"], positions_BxL=mb["positions"], **extra
            )
            return head_loss.label_cross_entropy(
                x_BxLxD,
                model.head_VxD(),
                mb["targets"],
                mb["loss_mask"],
                groups=_current_data_shards(),
                chunk=head_chunk,
            )
        if decoder:
            logits_BxLxV = model(
                mb["input_ids"], attention_mask_BxL=mb["attention_mask"], positions_BxL=mb["positions"], **extra
            )
        else:
            logits_BxLxV = model(
                mb["input_ids"],
                attention_mask_BxL=mb["attention_mask"],
                decoder_input_ids_BxT=mb["decoder_input_ids"],
                decoder_attention_mask_BxT=mb["decoder_attention_mask"],
                **extra,
            )
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
            (loss_sum, n_tok), g_sum = grad_fn(params, jax.tree.map(lambda x: x[0], batch), jax.random.fold_in(base, 0))
        else:
            zeros = jax.tree.map(jnp.zeros_like, params)
            (g_sum, loss_sum, n_tok), _ = jax.lax.scan(
                micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum))
            )
        # One normalisation by the label tokens of the whole batch (not a mean of micro-batch means).
        denom = jnp.maximum(n_tok, 1.0)
        grads = jax.tree.map(lambda g: g / denom, g_sum)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = dict(params=new_params, opt_state=opt_state, step=state["step"] + 1, rng=state["rng"])
        # positions the step computed on: all of them (encoder + decoder for T5), or the packed tokens
        computed = (
            batch["pack_index"].size
            if "pack_index" in batch
            else sum(batch[k].size for k in ("input_ids", "decoder_input_ids") if k in batch)
        )
        metrics = dict(
            loss=loss_sum / denom,
            grad_norm=optax.tree.norm(grads),
            lr=schedule(state["step"]),
            label_tokens=n_tok,
            computed_tokens=jnp.float32(computed),
        )
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------- the trainer


@dataclasses.dataclass
class TrainSetup:
    """The trainer of one student on one mesh: its optimizer, state shardings and the jitted step; makes,
    describes (for restore) and advances the train state. Used by `train`, the comparison and the benchmarks."""

    cfg: TrainConfig
    mesh: Any
    student: Student
    tx: Any
    schedule: Any
    state_shardings: dict
    batch_sharding: NamedSharding
    step_fn: Callable  # jitted (state, batch) -> (state, metrics), state donated
    init_params: Callable[[], dict]  # the params placed with state_shardings["params"] (student.make_param_init)
    pack_multiple: int = 0  # > 0: put_batch adds the padding-free layout's indices (layers.Packing)

    def init_state(self) -> dict:
        with jax.set_mesh(self.mesh):
            params = self.init_params()
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
        rep = self.state_shardings["step"]
        return dict(
            params=params,
            opt_state=opt_state,
            step=jax.device_put(jnp.int32(0), rep),
            rng=jax.device_put(jax.random.key_data(jax.random.key(self.cfg.seed)), rep),
        )

    def abstract_state(self) -> dict:
        abstract = dict(
            params=self.student.abstract_params,
            opt_state=jax.eval_shape(self.tx.init, self.student.abstract_params),
            step=jax.ShapeDtypeStruct((), jnp.int32),
            rng=jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
        )
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
        shards = data_shards(self.mesh)
        if shards % n_hosts:
            return {}
        groups = shards // n_hosts  # this host's data shards
        mask, weights = local["attention_mask"], local["loss_mask"]
        size = None
        if n_hosts > 1:  # every host must build the same global shape: agree on the largest N
            mine = batches.packed_size(mask, weights, groups, self.pack_multiple)
            size = int(np.max(multihost_utils.process_allgather(np.int32(mine))))
        idx = batches.packing_indices(mask, weights, groups, self.pack_multiple, size=size)
        return {} if idx is None else {"pack_index": idx[0], "unpack_index": idx[1]}

    def compile_ahead(self, state, batch_list) -> tuple[Callable, int]:
        """Compile the step for every batch shape in `batch_list` before any is run (the padding-free layout
        gives a few); for benchmarks, which time steps, not compiles. Returns (step(state, fed) -> (state,
        metrics) dispatching on fed's shapes, number of shapes). Call both inside `jax.set_mesh(self.mesh)`."""

        def key(fed):
            return tuple((k, tuple(v.shape)) for k, v in sorted(fed.items()))

        compiled = {}
        for b in batch_list:
            fed = self.put_batch(b)
            if key(fed) not in compiled:
                compiled[key(fed)] = self.step_fn.lower(state, fed).compile()
        return (lambda state, fed: compiled[key(fed)](state, fed)), len(compiled)

    def run_step(self, state, batch):
        with jax.set_mesh(self.mesh):
            return self.step_fn(state, self.put_batch(batch))


def setup(
    cfg: TrainConfig, *, student: Student | None = None, model=None, tokenizer=None, total_steps: int = 1, mesh=None
) -> TrainSetup:
    """The `TrainSetup` of `cfg` (its student built from `cfg`, or from `model`/`tokenizer`, unless given)."""
    mesh = mesh if mesh is not None else make_mesh(cfg)
    student = student or build_student(cfg, model=model, tokenizer=tokenizer)
    schedule = lr_schedule(cfg, total_steps)
    tx = make_optimizer(cfg, schedule)
    p_sh = param_shardings(student, mesh)
    rep = NamedSharding(mesh, P())
    state_sh = dict(
        params=p_sh, opt_state=opt_state_shardings(tx, student.abstract_params, p_sh, mesh), step=rep, rng=rep
    )
    b_sh = batch_sharding(mesh)
    step = make_train_step(student, tx, schedule, use_dropout=cfg.dropout, p_shardings=p_sh, head_chunk=cfg.head_chunk)
    step_fn = jax.jit(step, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, rep), donate_argnums=(0,))
    # Every CausalLM's `features` takes the padding-free layout (models.api).
    packs = uses_label_head(student, cfg.head_chunk)
    return TrainSetup(
        cfg,
        mesh,
        student,
        tx,
        schedule,
        state_sh,
        b_sh,
        step_fn,
        make_param_init(student, p_sh),
        pack_multiple=cfg.pack_multiple if packs else 0,
    )
