"""Logical axis names -> mesh axes ("data", "fsdp", "tensor"): ONE rules table for params and activations.

Params carry logical names in nnx metadata (`out_sharding=("embed", "mlp")`, eager sharding off so
models build without a mesh). `logical_to_sharding` turns an (abstract) nnx state into NamedShardings;
`constrain` pins activations inside `jax.set_mesh(mesh)` and is a no-op outside a mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("kv_length", None),
    # params and activations
    ("embed", "fsdp"),  # FSDP shards every weight along d_model
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("qkv", None),  # the 3 of a fused q/k/v kernel
    ("positions", None),  # learned position table rows
    ("norm", None),  # layer-norm scales/biases
    ("relpos_buckets", None),  # T5 relative attention buckets
)


def check_mesh_axes(data: int, fsdp: int, tensor: int) -> None:
    """Axis sizes are positive, except at most one -1 (= all the devices the other axes leave)."""
    sizes = (data, fsdp, tensor)
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(f"mesh: axis sizes must be positive (at most one -1 = 'the rest'), got {sizes}")


def resolve_mesh_shape(
    data: int, fsdp: int, tensor: int, n_devices: int, *, exact: bool = True
) -> tuple[int, int, int]:
    """Concrete (data, fsdp, tensor) for `n_devices` devices, the -1 axis filled with what the others leave.
    `exact`: the product must equal `n_devices`; otherwise it may be smaller (the mesh uses the first ones)."""
    check_mesh_axes(data, fsdp, tensor)
    sizes = [data, fsdp, tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(
                f"mesh {tuple(sizes)} does not fit {n_devices} devices ({n_devices} is not divisible by {known})"
            )
        sizes[sizes.index(-1)] = n_devices // known
    total = math.prod(sizes)
    if total > n_devices or (exact and total != n_devices):
        raise ValueError(
            f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has {total} devices but "
            f"{n_devices} are available"
            + ("; the product must equal the device count (use -1 for one axis)" if exact else "")
        )
    return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, *, devices=None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over the first devices it needs; one axis may be -1 (= all the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices), exact=False)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices[: math.prod(shape)])


def _axis_size(mesh_shape: dict, axes) -> int:
    axes = axes if isinstance(axes, tuple) else (axes,)
    n = 1
    for a in axes:
        n *= mesh_shape.get(a, 1)
    return n


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int] | None = None, mesh_shape: dict | None = None, rules=RULES
) -> P:
    """PartitionSpec for logical `names`. A mesh axis is used at most once (first dim wins); with
    `shape`/`mesh_shape` a dim that the mesh axes don't divide is replicated instead of failing."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name is not None and name not in table:
            raise ValueError(f"unknown logical axis '{name}'; expected one of: {', '.join(table)}")
        axes = table.get(name) if name is not None else None
        if axes is not None:
            tup = axes if isinstance(axes, tuple) else (axes,)
            if mesh_shape is not None:  # drop size-1 / absent mesh axes
                tup = tuple(a for a in tup if mesh_shape.get(a, 1) > 1)
            tup = tuple(a for a in tup if a not in used)
            if shape is not None and mesh_shape is not None and tup and shape[i] % _axis_size(mesh_shape, tup):
                tup = ()
            used.update(tup)
            axes = None if not tup else (tup[0] if len(tup) == 1 else tup)
        out.append(axes)
    return P(*out)


def _var_names(v: nnx.Variable):
    md = v.get_metadata()
    return md.get("out_sharding") or md.get("sharding_names")


def logical_to_sharding(abstract_state, mesh: Mesh, rules=RULES):
    """Tree of NamedSharding with the structure of `abstract_state` (an nnx.State, abstract or not).
    Variables without logical names are replicated."""
    mesh_shape = dict(mesh.shape)

    def one(v):
        if isinstance(v, nnx.Variable):
            names, shape = _var_names(v), v.get_value().shape
            spec = logical_to_spec(names, shape, mesh_shape, rules) if names else P()
            return v.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None], rules=RULES) -> jax.Array:
    """with_sharding_constraint by logical names inside `jax.set_mesh(mesh)`; identity outside a mesh."""
    if x.ndim != len(names):
        raise ValueError(f"constrain: array of rank {x.ndim} got {len(names)} axis names {tuple(names)}")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(names, x.shape, dict(mesh.shape), rules)
    return jax.lax.with_sharding_constraint(x, spec)
