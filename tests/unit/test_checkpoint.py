"""orbax checkpoints: sharded round trip, retention (last k + best by accuracy), uncommitted temp dirs
removed on reopen."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ftcot_jax.models.sharding import make_mesh
from ftcot_jax.train.checkpoint import Checkpoints, abstract_like, tmp_dirs


def _state(mesh, value=0.0):
    w = jax.device_put(jnp.arange(16.0).reshape(4, 4) + value, NamedSharding(mesh, P("fsdp", "tensor")))
    return {"params": {"blocks": {0: {"w": w}}}, "step": jnp.int32(7), "rng": jax.random.key_data(jax.random.key(3))}


def test_round_trip_keeps_values_and_shardings(tmp_path):
    mesh = make_mesh(2, 2, 2)
    state = _state(mesh)
    ck = Checkpoints(tmp_path, keep_last=2, keep_best=0)
    ck.save(5, state, {"epoch": 1, "batch": 3, "history": [{"accuracy": 0.5}]})
    ck.wait()
    shardings = jax.tree.map(lambda x: x.sharding, state)
    restored, data = ck.restore(5, abstract_like(state, shardings))
    ck.close()
    assert data == {"epoch": 1, "batch": 3, "history": [{"accuracy": 0.5}]}
    w = restored["params"]["blocks"][0]["w"]
    np.testing.assert_array_equal(np.asarray(w), np.asarray(state["params"]["blocks"][0]["w"]))
    assert w.sharding.spec == P("fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(restored["rng"]), np.asarray(state["rng"]))
    assert int(restored["step"]) == 7


def test_keeps_last_k_plus_best(tmp_path):
    mesh = make_mesh(8, 1, 1)
    ck = Checkpoints(tmp_path, keep_last=2, keep_best=1)
    acc = {1: 0.5, 2: 0.9, 3: 0.1, 4: None, 5: 0.3, 6: None}
    for step, a in acc.items():
        ck.save(step, _state(mesh, step), {"step": step}, metrics=None if a is None else {"accuracy": a})
    ck.close()
    assert sorted(Checkpoints(tmp_path).all_steps()) == [2, 5, 6]


def test_uncommitted_temp_dirs_are_removed_on_reopen(tmp_path):
    mesh = make_mesh(8, 1, 1)
    ck = Checkpoints(tmp_path)
    ck.save(1, _state(mesh), {"step": 1})
    ck.close()
    # What a crash mid-save leaves: the step's temp directory, never renamed to "2".
    leftover = tmp_path / "2.orbax-checkpoint-tmp-1234567"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "partial").write_bytes(b"half")
    assert tmp_dirs(tmp_path) == [leftover]
    ck = Checkpoints(tmp_path)
    assert ck.latest_step() == 1
    assert not tmp_dirs(tmp_path) and not leftover.exists()
    ck.close()
