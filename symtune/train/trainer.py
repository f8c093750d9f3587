"""The model-agnostic trainer: sharded init, one jitted step, gradient accumulation, metrics.

A model is any `nnx.Module` built by `build_model(rngs)` whose parameters carry logical axis
names; an objective is `loss_fn(model, batch, key) -> sums` returning *sums* over the batch:
`loss` (weighted loss), `weight` (total loss weight) and optionally `correct` (weighted correct
predictions) and `tokens` (non-padding tokens). The step divides by the global batch's total
weight, so packing, padding and microbatching all weight tokens the same way.

The train state is a plain dict pytree `{step, params, opt_state, other}`: `params` is the
model's nnx.Param state as a pure nested dict of arrays (the layout checkpoints, exports and warm
starts share), `other` its non-parameter variables. Its shardings come from compiling the
initialiser, so the same abstract state serves fresh init and restore onto any mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from symtune.errors import UserError
from symtune.train import mesh as mesh_lib
from symtune.train.optim import OptimizerConfig, make_optimizer, make_schedule

Batch = Mapping[str, Any]
LossFn = Callable[[nnx.Module, Batch, jax.Array], dict[str, jax.Array]]
TrainState = dict[str, Any]

# Dense bf16 peak FLOP/s per device by device kind (public spec sheets); "cpu" is what a 2048²
# fp32 matmul reaches on the 2-core development machine. Override with TrainerConfig.peak_flops.
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6": 918e12,
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "cpu": 2.5e11,
}


@gin.configurable
@dataclass(frozen=True)
class TrainerConfig:
    """How long and how to step; the optimizer has its own config."""

    steps: int = 1000
    microbatches: int = 1
    seed: int = 0
    log_every: int = 10
    peak_flops: float | None = None  # per device; None = look up the device kind

    def __post_init__(self):
        if self.steps <= 0 or self.microbatches <= 0 or self.log_every <= 0:
            raise UserError("steps, microbatches and log_every must be positive")


def peak_flops_per_device(device: jax.Device) -> float | None:
    """Peak FLOP/s of one device from PEAK_FLOPS, matched on its device kind."""
    kind = device.device_kind.lower() if device.platform != "cpu" else "cpu"
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def split_microbatches(x: jax.Array, n: int) -> jax.Array:
    """[B, ...] -> [n, B/n, ...] taking rows i, i+n, ... so each device keeps its share of every microbatch."""
    if x.shape[0] % n:
        raise UserError(f"batch of {x.shape[0]} rows does not split into {n} microbatches")
    y = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    spec = PartitionSpec(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, spec)


def shard_like_params(tree, params, param_specs):
    """Constrains every params-shaped subtree of `tree` (Adam moments, ...) to the params' specs.

    Sharding propagation alone leaves optimizer moments replicated; leaves whose shape differs
    from their parameter's (Adafactor's row/column factors) are small and stay replicated.
    """
    structure = jax.tree.structure(params)
    shapes = [p.shape for p in jax.tree.leaves(params)]
    specs = jax.tree.leaves(param_specs, is_leaf=_is_spec)

    def is_params_like(node) -> bool:
        return jax.tree.structure(node) == structure

    def constrain(node):
        if not is_params_like(node):
            return node
        leaves = [
            jax.lax.with_sharding_constraint(x, spec if x.shape == shape else PartitionSpec())
            for x, shape, spec in zip(jax.tree.leaves(node), shapes, specs)
        ]
        return jax.tree.unflatten(structure, leaves)

    return jax.tree.map(constrain, tree, is_leaf=is_params_like)


class Trainer:
    """Owns the compiled init and step for one model, objective, optimizer and mesh."""

    def __init__(
        self,
        build_model: Callable[[nnx.Rngs], nnx.Module],
        loss_fn: LossFn,
        *,
        mesh: Mesh,
        rules: mesh_lib.LogicalRules,
        config: TrainerConfig,
        optimizer: OptimizerConfig,
        flops_per_token: float | None = None,
    ):
        self.mesh, self.rules, self.config = mesh, rules, config
        self.loss_fn = loss_fn
        self.flops_per_token = flops_per_token
        self.tx = make_optimizer(optimizer, config.steps)
        self.schedule = make_schedule(optimizer, config.steps)
        self._build_model = build_model
        with self.context():
            abstract_model = nnx.eval_shape(lambda: build_model(nnx.Rngs(config.seed)))
            self.graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
            self.param_specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
            abstract_params = nnx.to_pure_dict(abstract_params)
        shapes = _flat(jax.tree.map(lambda x: x.shape, abstract_params))
        specs = _flat(self.param_specs)
        mesh_lib.check_divisible(shapes, specs, mesh)
        self.param_count = sum(int(np.prod(s)) for s in shapes.values())
        with self.context():
            self._init = jax.jit(self._init_state).lower().compile()
            shapes_of_state = jax.eval_shape(self._init_state)
        self.state_shardings = self._init.output_shardings
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            shapes_of_state, self.state_shardings,
        )
        self._compiled_step = None

    def context(self):
        """The mesh and logical-rules context that model code runs in."""
        return _Context(self.mesh, self.rules)

    # ---- state -----------------------------------------------------------------------------

    def _init_state(self) -> TrainState:
        _, params, other = nnx.split(self._build_model(nnx.Rngs(self.config.seed)), nnx.Param, ...)
        return self._state(nnx.to_pure_dict(params), other)

    def init_state(self, params: Any = None) -> TrainState:
        """A freshly initialised, sharded train state; with `params` (sharded like
        `abstract_state["params"]`, e.g. a warm start) those, and no random parameters are made."""
        with self.context():
            if params is None:
                return self._init()
            # The model is built for its non-parameter state only: its random parameters are
            # dead code under jit and never computed.
            from_params = jax.jit(self._state_from_params, in_shardings=(self.state_shardings["params"],),
                                  out_shardings=self.state_shardings, donate_argnums=0)
            return from_params(params)

    def _state_from_params(self, params: Any) -> TrainState:
        _, _, other = nnx.split(self._build_model(nnx.Rngs(self.config.seed)), nnx.Param, ...)
        return self._state(params, other)

    def _state(self, params: Any, other: Any) -> TrainState:
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": shard_like_params(self.tx.init(params), params, self.param_specs),
            "other": other,
        }

    def model(self, state: TrainState) -> nnx.Module:
        """The model with the state's parameters (for evaluation and export)."""
        return nnx.merge(self.graphdef, state["params"], state["other"])

    # ---- step ------------------------------------------------------------------------------

    def _grads_and_sums(self, params, other, batch: Batch, key: jax.Array):
        def loss_of(p, micro, k):
            sums = self.loss_fn(nnx.merge(self.graphdef, p, other), micro, k)
            return sums["loss"], sums

        grad_fn = jax.grad(loss_of, has_aux=True)
        n = self.config.microbatches
        if n == 1:
            return grad_fn(params, batch, key)
        micro = jax.tree.map(lambda x: split_microbatches(x, n), dict(batch))

        def body(carry, xs):
            grads, sums = grad_fn(params, xs[0], jax.random.fold_in(key, xs[1]))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first, key)
        )
        (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(n)))
        return grads, sums

    def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(jax.random.key(self.config.seed), state["step"])
        grads, sums = self._grads_and_sums(state["params"], state["other"], batch, key)
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": sums["loss"] / weight,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": self.schedule(state["step"]),
            "weight": sums["weight"],
        }
        if "correct" in sums:
            metrics["accuracy"] = sums["correct"] / weight
        if "tokens" in sums:
            metrics["tokens"] = sums["tokens"]
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "other": state["other"]}
        return new_state, metrics

    def batch_shardings(self, batch: Batch) -> dict[str, NamedSharding]:
        return {k: mesh_lib.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}

    def lower_step(self, example_batch: Batch):
        """Lowers (traces, without compiling or allocating) the step for batches shaped like
        `example_batch` (global shapes; arrays or jax.ShapeDtypeStruct)."""
        batch_sh = self.batch_shardings(example_batch)
        abstract_batch = {
            k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype, sharding=batch_sh[k])
            for k, v in example_batch.items()
        }
        step = jax.jit(
            self._step,
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, None),
            donate_argnums=0,
        )
        with self.context():
            return step.lower(self.abstract_state, abstract_batch)

    def compile_step(self, example_batch: Batch):
        """Compiles the step for batches shaped like `example_batch` (global shapes)."""
        lowered = self.lower_step(example_batch)
        with self.context():
            self._compiled_step = lowered.compile()
        return self._compiled_step

    def global_batch(self, local_batch: Batch) -> dict[str, jax.Array]:
        """Assembles this process's rows into global arrays sharded over the batch axes."""
        return {
            k: jax.make_array_from_process_local_data(mesh_lib.batch_sharding(self.mesh, v.ndim), v)
            for k, v in local_batch.items()
        }

    def step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on a global batch (donates `state`)."""
        if self._compiled_step is None:
            self.compile_step(batch)
        with self.context():
            return self._compiled_step(state, batch)

    def memory_per_device(self) -> dict[str, int]:
        """XLA's compiled memory analysis of the step, per device, in bytes."""
        if self._compiled_step is None:
            raise RuntimeError("compile the step first")
        analysis = self._compiled_step.memory_analysis()
        return {
            "arguments": int(analysis.argument_size_in_bytes),
            "outputs": int(analysis.output_size_in_bytes),
            "temporaries": int(analysis.temp_size_in_bytes),
            "aliased": int(analysis.alias_size_in_bytes),
        }

    def mfu(self, tokens_per_second: float) -> float | None:
        """Model FLOPs utilisation from the analytic FLOPs per token and the device peak."""
        peak = self.config.peak_flops or peak_flops_per_device(self.mesh.devices.flat[0])
        if not (peak and self.flops_per_token):
            return None
        return self.flops_per_token * tokens_per_second / (peak * self.mesh.devices.size)


class _Context:
    """`with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):` as one reusable object."""

    def __init__(self, mesh: Mesh, rules: mesh_lib.LogicalRules):
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self._mesh_cm = jax.set_mesh(self.mesh)
        self._rules_cm = nnx.logical_axis_rules(self.rules)
        self._mesh_cm.__enter__()
        self._rules_cm.__enter__()

    def __exit__(self, *exc):
        self._rules_cm.__exit__(*exc)
        self._mesh_cm.__exit__(*exc)


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def _flat(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, (tuple, PartitionSpec)))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}
