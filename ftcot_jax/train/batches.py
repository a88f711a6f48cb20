"""Fine-tune samples -> token arrays -> fixed-shape, seeded, resumable, per-host batches.

Decoder students see `prompt + label + EOS`; the loss covers the label and the EOS only
(as in `DataModule.tokenize`, src/custom/data_module.py of github.com/itsnamgyu/reasoning-teacher).
Encoder-decoder students see `prompt` -> `label` (the tokenizer adds its own EOS, as T5's does).
A sample becomes one row per template its method trains on (`prompts.METHOD_TRAIN_TEMPLATES`): Distilling
step-by-step's question gives a `predict` row and an `explain` row, whose label tokens weigh `label_weight`
and `1 - label_weight` in the loss (the batch's `loss_mask` carries each token's weight; other rows weigh 1).

The whole sample set is tokenised once (Fine-tune-CoT sets are thousands of samples), every epoch is a
permutation drawn from `(seed, epoch)`, and the iterator position is just `(epoch, batch)`: a
checkpoint stores those two integers and resuming replays exactly the same batches.

Batch arrays are shaped (accum, micro, length): `accum` micro-batches of `micro` rows, and the
length is padded up to a multiple of `bucket`, so only a bounded set of shapes is ever compiled.
Training rows are right-padded with positions 0..n-1 (the reference's left padding only moved GPT-2
positions, which are masked out anyway in a correct implementation).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from ftcot_jax import prompts

# ----------------------------------------------------------------------------- tokenisation


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of every sample. Decoder: `source` = prompt, `target` = label + EOS (loss on target)."""

    model_type: str  # decoder | encoder_decoder
    source: list[list[int]]
    target: list[list[int]]
    sample_keys: list[tuple[int, int]]  # (sample_index, completion_index)
    truncated_prompts: int
    truncated_labels: int
    weights: list[float] | None = None  # each row's label-token weight in the loss; None = all 1

    def __len__(self):
        return len(self.source)

    def seq_len(self, i: int) -> int:
        if self.model_type == "decoder":
            return len(self.source[i]) + len(self.target[i])
        return max(len(self.source[i]), len(self.target[i]))


def _encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def template_weight(template: str, label_weight: float) -> float:
    """The loss weight of a row of `template`: label_weight for `predict`, 1 - label_weight for `explain`, else 1."""
    return {"sbs_predict": label_weight, "sbs_explain": 1.0 - label_weight}.get(template, 1.0)


def encode_samples(samples, tokenizer, *, model_type: str, max_length: int, label_weight: float = 0.5) -> Encoded:
    """Format with prompts.finetune_input/label (one row per template of the sample's method) and tokenise;
    prompt and label are each cut to max_length.

    Truncation is counted and reported as a warning (never silent, never a dropped sample).
    """
    if model_type not in ("decoder", "encoder_decoder"):
        raise ValueError(f"model_type must be 'decoder' or 'encoder_decoder', got {model_type!r}")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; the student needs one to learn where to stop")
    src, tgt, keys, weights = [], [], [], []
    cut_p = cut_l = 0
    rows = [(s, t) for s in samples for t in prompts.METHOD_TRAIN_TEMPLATES[s.method]]
    for s, template in rows:
        prompt = prompts.finetune_input(template, model_type, s.question)
        label = prompts.finetune_label(template, model_type, s.answer, s.rationale or None)
        if model_type == "decoder":
            p = _encode(tokenizer, prompt, True)
            t = _encode(tokenizer, label, False) + [eos]
        else:
            p = _encode(tokenizer, prompt, True)
            t = _encode(tokenizer, label, True)
            if not t or t[-1] != eos:
                t = t + [eos]
        if len(p) > max_length:
            cut_p += 1
            p = p[: max_length - 1] + [p[-1]] if model_type == "encoder_decoder" else p[:max_length]
        if len(t) > max_length:
            cut_l += 1
            t = t[: max_length - 1] + [eos] if model_type == "encoder_decoder" else t[:max_length]
        src.append(p)
        tgt.append(t)
        keys.append((s.sample_index, s.completion_index))
        weights.append(template_weight(template, label_weight))
    if not src:
        raise ValueError("no samples to encode")
    if cut_p or cut_l:
        warnings.warn(
            f"{cut_p} of {len(src)} prompts and {cut_l} of {len(src)} labels were longer than "
            f"max_length={max_length} tokens and were truncated (kept, not dropped)",
            stacklevel=2,
        )
    return Encoded(model_type, src, tgt, keys, cut_p, cut_l, None if all(w == 1.0 for w in weights) else weights)


# ----------------------------------------------------------------------------- batching


def _round_up(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m)) * m)


def batch_shapes(model_type: str, accum: int, micro: int, length: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of the arrays `Batcher.batch` makes at `length` positions (source and target
    alike for an encoder-decoder), for a step lowered without data (ahead-of-time compilation)."""
    shape = (accum, micro, length)
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    if model_type == "decoder":
        names = {"input_ids": i32, "attention_mask": i32, "positions": i32, "targets": i32, "loss_mask": f32}
    else:
        names = {
            "input_ids": i32,
            "attention_mask": i32,
            "decoder_input_ids": i32,
            "decoder_attention_mask": i32,
            "targets": i32,
            "loss_mask": f32,
        }
    return {k: (shape, dt) for k, dt in names.items()}


@dataclasses.dataclass(frozen=True)
class Batcher:
    """Deterministic batches of an Encoded set for one host.

    Global batch = `batch_size` rows = `grad_accum` micro-batches; each host builds only its own
    `micro / process_count` rows of every micro-batch (all hosts agree on order and length).
    The last batch of an epoch is filled with weight-0 rows (shapes stay fixed, no sample dropped).
    """

    data: Encoded
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    bucket: int = 64
    pad_id: int = 0
    decoder_start_id: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.micro % self.process_count:
            raise ValueError(f"micro-batch of {self.micro} rows cannot be split over {self.process_count} hosts")

    @property
    def micro(self) -> int:
        return self.batch_size // self.grad_accum

    def weight(self, i: int) -> float:
        """Sample i's label-token weight in the loss."""
        return 1.0 if self.data.weights is None else self.data.weights[i]

    @property
    def steps_per_epoch(self) -> int:
        return int(math.ceil(len(self.data) / self.batch_size))

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

    def rows(self, epoch: int, index: int) -> np.ndarray:
        """Sample ids of global batch `index` of `epoch` (-1 = filler row), shape (accum, micro)."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range for {self.steps_per_epoch} batches per epoch")
        ids = self.permutation(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        ids = np.concatenate([ids, -np.ones(self.batch_size - len(ids), dtype=ids.dtype)])
        return ids.reshape(self.grad_accum, self.micro)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Host-local arrays, each (accum, micro // process_count, length)."""
        rows = self.rows(epoch, index)
        real = rows[rows >= 0]
        per_host = self.micro // self.process_count
        local = rows[:, self.process_index * per_host : (self.process_index + 1) * per_host]
        if self.data.model_type == "decoder":
            return self._decoder_batch(local, max(self.data.seq_len(i) for i in real))
        src_len = max(len(self.data.source[i]) for i in real)
        tgt_len = max(len(self.data.target[i]) for i in real)
        return self._seq2seq_batch(local, src_len, tgt_len)

    def _decoder_batch(self, rows: np.ndarray, longest: int) -> dict[str, np.ndarray]:
        length = _round_up(longest, self.bucket)
        shape = rows.shape + (length,)
        input_ids = np.full(shape, self.pad_id, np.int32)
        targets = np.full(shape, self.pad_id, np.int32)
        attention_mask = np.zeros(shape, np.int32)
        loss_mask = np.zeros(shape, np.float32)
        for a, m in np.ndindex(rows.shape):
            i = rows[a, m]
            if i < 0:
                attention_mask[a, m] = 1  # filler row: attended (no all-masked softmax), weight 0
                continue
            p, t = self.data.source[i], self.data.target[i]
            seq = p + t
            n = len(seq)
            input_ids[a, m, :n] = seq
            attention_mask[a, m, :n] = 1
            # Position j predicts token j+1; the loss counts it iff token j+1 is a label token.
            targets[a, m, : n - 1] = seq[1:]
            loss_mask[a, m, max(len(p) - 1, 0) : n - 1] = self.weight(i)
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), shape).copy()
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            positions=positions,
            targets=targets,
            loss_mask=loss_mask,
        )

    def _seq2seq_batch(self, rows: np.ndarray, src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
        ls, lt = _round_up(src_len, self.bucket), _round_up(tgt_len, self.bucket)
        input_ids = np.full(rows.shape + (ls,), self.pad_id, np.int32)
        attention_mask = np.zeros(rows.shape + (ls,), np.int32)
        dec_in = np.full(rows.shape + (lt,), self.pad_id, np.int32)
        dec_mask = np.zeros(rows.shape + (lt,), np.int32)
        targets = np.full(rows.shape + (lt,), self.pad_id, np.int32)
        loss_mask = np.zeros(rows.shape + (lt,), np.float32)
        for a, m in np.ndindex(rows.shape):
            i = rows[a, m]
            if i < 0:
                attention_mask[a, m] = 1
                dec_mask[a, m] = 1
                continue
            s, t = self.data.source[i], self.data.target[i]
            input_ids[a, m, : len(s)] = s
            attention_mask[a, m, : len(s)] = 1
            dec_in[a, m, : len(t)] = [self.decoder_start_id] + t[:-1]
            dec_mask[a, m, : len(t)] = 1
            targets[a, m, : len(t)] = t
            loss_mask[a, m, : len(t)] = self.weight(i)
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=dec_in,
            decoder_attention_mask=dec_mask,
            targets=targets,
            loss_mask=loss_mask,
        )

    def n_tokens(self, epoch: int, index: int) -> int:
        """Real (non-padding) tokens in global batch `index`, for tokens/s."""
        return int(
            sum(len(self.data.source[i]) + len(self.data.target[i]) for i in self.rows(epoch, index).ravel() if i >= 0)
        )

    def iterate(self, start_epoch: int = 0, start_index: int = 0, epochs: int = 1):
        """Yield ((epoch, index), batch) from a saved position onwards."""
        for epoch in range(start_epoch, epochs):
            first = start_index if epoch == start_epoch else 0
            for index in range(first, self.steps_per_epoch):
                yield (epoch, index), self.batch(epoch, index)


# ----------------------------------------------------------------------------- padding-free layout


def needed_tokens(attention_mask: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Decoder batch (..., L) -> bool (..., L): the positions the loss depends on.

    Position j of a row matters iff it is a real token and no later than the row's last loss position
    (causal attention: later positions influence nothing that carries loss). Rows without loss (batch
    fillers) need no position at all."""
    L = attention_mask.shape[-1]
    j = np.arange(L)
    has_loss = loss_mask > 0
    last = np.where(has_loss.any(-1), L - 1 - np.argmax(has_loss[..., ::-1], axis=-1), -1)
    return (attention_mask > 0) & (j <= last[..., None])


def packing_indices(
    attention_mask: np.ndarray, loss_mask: np.ndarray, groups: int, multiple: int, size: int | None = None
):
    """Gather indices of the padding-free layout (models.layers.Packing) for (accum, rows, L) arrays.

    Rows are split into `groups` consecutive groups (the data shards: packing never moves a token to
    another device). Returns (index (accum, groups, N), inverse (accum, groups, rows // groups * L)):
    index[a, g, n] = flat position (within the group) of the group's n-th needed token, or M (none);
    inverse[a, g, m] = the packed slot of position m, or N (dropped). N is the largest group's count
    rounded up to `multiple` (a bounded set of shapes), or `size` when given (multi-host: the same N on
    every host). Returns None when packing would not shrink the batch (N >= M)."""
    A, rows, L = attention_mask.shape
    if rows % groups:
        raise ValueError(f"packing: {rows} rows do not split into {groups} data shards")
    M = rows // groups * L
    keep = needed_tokens(attention_mask, loss_mask).reshape(A, groups, M)
    N = size if size is not None else packed_size(attention_mask, loss_mask, groups, multiple)
    if N >= M:
        return None
    index = np.full((A, groups, N), M, np.int32)
    inverse = np.full((A, groups, M), N, np.int32)
    for a, g in np.ndindex(A, groups):
        pos = np.flatnonzero(keep[a, g])
        index[a, g, : len(pos)] = pos
        inverse[a, g, pos] = np.arange(len(pos), dtype=np.int32)
    return index, inverse


def packed_size(attention_mask: np.ndarray, loss_mask: np.ndarray, groups: int, multiple: int) -> int:
    """N that `packing_indices` would choose for these arrays (hosts agree on the largest)."""
    A, rows, L = attention_mask.shape
    if rows % groups:
        raise ValueError(f"packing: {rows} rows do not split into {groups} data shards")
    counts = needed_tokens(attention_mask, loss_mask).reshape(A, groups, rows // groups * L).sum(-1)
    return max(multiple, -(-int(counts.max()) // multiple) * multiple)
