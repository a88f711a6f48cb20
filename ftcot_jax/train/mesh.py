"""Devices for training: `jax.distributed` start-up, the (data, fsdp, tensor) mesh of a `TrainConfig`, and
how batches lie on it."""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ftcot_jax.config import MeshConfig, TrainConfig
from ftcot_jax.models import sharding

# The mesh axes batch rows are split over: the sharding rules' "batch" entry.
BATCH_AXES: tuple[str, ...] = dict(sharding.RULES)["batch"]


def maybe_initialize_distributed(cfg: TrainConfig) -> None:
    """jax.distributed.initialize() once per process, before anything touches the devices (every host runs
    this); nothing when `distributed.enabled` is off."""
    d = cfg.distributed
    if not d.enabled or jax.distributed.is_initialized():
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


def mesh_shape(mesh: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Concrete (data, fsdp, tensor) of `mesh` on `n_devices` devices (or its first `num_devices`): the
    product must equal their count, one -1 axis takes what the others leave."""
    if mesh.num_devices:
        if mesh.num_devices > n_devices:
            raise ValueError(f"mesh.num_devices={mesh.num_devices} but only {n_devices} devices are available")
        n_devices = mesh.num_devices
    return sharding.resolve_mesh_shape(mesh.data, mesh.fsdp, mesh.tensor, n_devices)


def make_mesh(cfg: TrainConfig, devices=None, num_slices: int = 1) -> Mesh:
    """The mesh of `cfg.mesh` over the devices it names (all of them, or the first `num_devices`). `devices`:
    other devices than this process's (a TPU slice described by libtpu, to compile ahead of time); with
    `num_slices` > 1 they form that many slices and the data axis spans them (the data-centre network carries
    only the data-parallel gradient reduction), the other axes stay inside a slice."""
    devices = jax.devices() if devices is None else list(devices)
    data, fsdp, tensor = mesh_shape(cfg.mesh, len(devices))
    if num_slices == 1:
        return sharding.make_mesh(data, fsdp, tensor, devices=devices[: data * fsdp * tensor])
    if data % num_slices:
        raise ValueError(
            f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) over {num_slices} slices: the data axis must be a "
            f"multiple of the number of slices (it spans them)"
        )
    grid = mesh_utils.create_hybrid_device_mesh(
        (data // num_slices, fsdp, tensor), (num_slices, 1, 1), devices=devices, allow_split_physical_axes=True
    )
    return Mesh(grid, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(accum, micro, length) arrays: micro-batch rows over the data-parallel axes."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


def data_shards(mesh) -> int:
    """How many data-parallel shards the batch rows are split into on `mesh` (a Mesh or an AbstractMesh)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)
