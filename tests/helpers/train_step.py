"""One train step of a tiny GPT-2 on a given mesh, cached per config: test_step, test_head_loss and
test_packing compare such steps (each compile costs seconds, so a config runs once per session)."""

from __future__ import annotations

import jax

from ftcot_jax.config import TrainConfig, from_dict
from ftcot_jax.train import batches
from ftcot_jax.train.step import setup
from tests.helpers.models import CHAR_GPT2

STEP_GPT2 = dict(CHAR_GPT2, n_layer=1)


def step_config(mesh: tuple[int, int, int], **kw) -> TrainConfig:
    """A from-scratch STEP_GPT2 trainer config on a (data, fsdp, tensor) mesh; keywords are config keys."""
    m = {"data": mesh[0], "fsdp": mesh[1], "tensor": mesh[2], "num_devices": mesh[0] * mesh[1] * mesh[2]}
    return from_dict(TrainConfig, dict(run_dir="unused", from_scratch=True, model_config=STEP_GPT2, mesh=m, **kw))


_RUNS: dict = {}


def run_step(cfg: TrainConfig, tok, encoded, accum: int = 1):
    """(initial params, params after one step, metrics, setup); cached per config (compiles are slow)."""
    key = (repr(cfg), accum)
    if key not in _RUNS:
        _RUNS[key] = _run_uncached(cfg, tok, encoded, accum)
    return _RUNS[key]


def _run_uncached(cfg, tok, encoded, accum):
    st = setup(cfg, tokenizer=tok)
    state = st.init_state()
    params0 = jax.device_get(state.params)
    b = batches.Batcher(encoded, 8, accum, seed=0, bucket=16, pad_id=0)
    state, m = st.run_step(state, b.batch(0, 0))
    return params0, jax.device_get(state.params), jax.device_get(m), st
