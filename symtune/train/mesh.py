"""Device mesh (replica, data, fsdp, tensor) and the logical→mesh rule presets.

Models name every parameter and activation dimension with a logical axis; one rule table per
parallelism style maps those names onto mesh axes, so DP, FSDP, TP and their mixes are a config
change. Logical names:

  parameters   vocab, embed, mlp, heads, kv_heads, kv (head dim), layers (scan axis), norm
  activations  act_batch, act_len, act_embed, act_heads, act_kv, act_mlp, act_vocab
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from symtune.errors import UserError

MESH_AXES = ("replica", "data", "fsdp", "tensor")
BATCH_AXES = ("replica", "data", "fsdp")

LogicalRules = tuple[tuple[str, Any], ...]

LOGICAL_AXES = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "kv", "layers", "norm",
    "act_batch", "act_len", "act_embed", "act_heads", "act_kv", "act_mlp", "act_vocab",
)

_BATCH = (("act_batch", BATCH_AXES),)
_FSDP = (("embed", "fsdp"),)
_TP = (
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)



def _complete(*parts: LogicalRules) -> LogicalRules:
    """Every logical axis gets an entry (None = replicated): flax passes unknown names through."""
    table = {name: None for name in LOGICAL_AXES}
    for part in parts:
        table.update(part)
    return tuple(table.items())


RULE_PRESETS: dict[str, LogicalRules] = {
    "dp": _complete(_BATCH),
    "fsdp": _complete(_BATCH, _FSDP),
    "tp": _complete(_BATCH, _TP),
    "fsdp+tp": _complete(_BATCH, _FSDP, _TP),
}


@gin.configurable
@dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (one may be -1: the devices left over) and the rule preset to use."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    replica: int = 1
    rules: str = "dp"

    def __post_init__(self):
        sizes = self._sizes()
        free = [name for name, size in sizes.items() if size == -1]
        bad = [f"{name}={size}" for name, size in sizes.items() if size == 0 or size < -1]
        if bad or len(free) > 1:
            raise UserError(
                f"mesh {self._describe(sizes)}: each axis size must be positive, with at most one -1 "
                f"(got {', '.join(bad) or ' and '.join(free) + ' = -1'})"
            )
        logical_rules(self.rules)

    def _sizes(self) -> dict[str, int]:
        return {"replica": self.replica, "data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def axis_sizes(self, device_count: int) -> dict[str, int]:
        """The four axis sizes with -1 resolved; a UserError when they cannot cover the devices."""
        sizes = self._sizes()
        free = [name for name, size in sizes.items() if size == -1]
        fixed = math.prod(size for size in sizes.values() if size != -1)
        if free:
            if device_count % fixed:
                raise UserError(
                    f"mesh {self._describe(sizes)}: the fixed axes multiply to {fixed}, which does not "
                    f"divide the {device_count} devices; pick sizes whose product divides {device_count}"
                )
            sizes[free[0]] = device_count // fixed
        elif fixed != device_count:
            raise UserError(
                f"mesh {self._describe(sizes)} has {fixed} slots but there are {device_count} devices; "
                f"make the axis sizes multiply to {device_count} (or set one to -1)"
            )
        return sizes

    @staticmethod
    def _describe(sizes: dict[str, int]) -> str:
        return " x ".join(f"{name}={size}" for name, size in sizes.items())


def logical_rules(preset: str) -> LogicalRules:
    """The rule table of a preset: dp, fsdp, tp or fsdp+tp."""
    if preset not in RULE_PRESETS:
        raise UserError(f"unknown sharding rules {preset!r}; choose from {', '.join(RULE_PRESETS)}")
    return RULE_PRESETS[preset]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the (replica, data, fsdp, tensor) mesh over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    logical_rules(config.rules)  # fail early on a bad preset name
    sizes = config.axis_sizes(len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def describe_mesh(mesh: Mesh) -> str:
    """One line: axis sizes and the devices they cover."""
    axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return f"{axes} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices"


def spec_for(logical_axes: Sequence[str | None], rules: LogicalRules) -> PartitionSpec:
    """Maps a tuple of logical axis names to a PartitionSpec under `rules`."""
    table = dict(rules)
    return PartitionSpec(*(table.get(name) if name else None for name in logical_axes))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array: leading dimension over the batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def process_batch_rows(mesh: Mesh, batch_size: int) -> list[int]:
    """The rows of a global batch that this process's devices hold under `batch_sharding`, in the
    order `jax.make_array_from_process_local_data` reads them.

    Processes whose devices hold the same batch shards (a tensor axis spanning hosts) get the same
    rows; a process may hold fewer rows than there are processes, or rows that are not contiguous.
    """
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % shards:
        lower, upper = batch_size // shards * shards, -(-batch_size // shards) * shards
        raise UserError(
            f"batch_size={batch_size} does not split over the mesh's {shards} batch shards "
            f"({' x '.join(f'{a}={mesh.shape[a]}' for a in BATCH_AXES)}); use a multiple of {shards} "
            f"(e.g. {upper}{f' or {lower}' if lower else ''}) or fewer batch shards (more tensor parallelism)")
    per_shard = batch_size // shards
    held = batch_sharding(mesh, 1).addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({index[0].start or 0 for index in held})
    return [row for start in starts for row in range(start, start + per_shard)]


def check_divisible(shapes: dict[str, tuple[int, ...]], specs: dict[str, PartitionSpec], mesh: Mesh) -> None:
    """Raises a UserError naming the first array whose dimension its mesh axes do not divide."""
    for name, shape in shapes.items():
        for dim, (size, axes) in enumerate(zip(shape, specs[name])):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                raise UserError(
                    f"{name} dimension {dim} has size {size}, not divisible by mesh axes "
                    f"{'x'.join(axes)} = {ways}; change the mesh or the rules preset"
                )
