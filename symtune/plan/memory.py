"""The per-chip memory of one train step, estimated from shapes alone (nothing compiled or allocated).

Parts, per chip (`Memory`):

  params       fp32 master weights, each divided by the mesh axes its logical axes map to under
               the rules (symtune.train.mesh.spec_for, as the trainer places them)
  grads        fp32 and sharded like the parameters; twice over with microbatches (the accumulator
               and the microbatch's own)
  optimizer    the real state shapes (`tx.init` under eval_shape) placed as the trainer places
               them (trainer.shard_like_params): a moment shaped like its parameter is sharded like
               it; anything else (Adafactor's row/column factors, counts) is replicated
  activations  the residuals JAX saves for the backward pass under the remat policy, traced from
               the real model and loss at one chip's shapes: its rows of a microbatch, its share
               of heads, MLP and vocabulary under tensor parallelism. Residuals that depend on the
               weights alone (compute-dtype copies) are divided by fsdp.
  gathered     XLA:TPU only, with microbatches: the layers' weights in the compute dtype, gathered
               over fsdp once and held across the microbatch loop (the compiler hoists the
               loop-invariant casts and all-gathers out of it; llama-3-8b on v5p-8 with 8
               microbatches: 13.0 GiB per chip). XLA:GPU and XLA:CPU gather per microbatch.
  working      the transient peak on top, the largest of: the output layer's backward (the f32
               logits gradient and the LM head's gradient before its reduce-scatter), one block's
               backward (its cotangents, about half its residuals, or the residuals remat
               recomputes; attention's two f32 score-sized gradients; its gathered weights and
               gradient under fsdp), and the optimizer update
               (an f32 updates tree, once the activations are freed)
  batch        one chip's rows of the int32 feature arrays

The total is what the compiler reports as arguments + temporaries of the compiled step (outputs
alias the donated arguments). tests/test_plan.py holds it to the TPU and GPU compilers' memory
analysis within 10% (deviceless compilation, symtune.plan.targets; the README's table has
llama-3-8b and llama-2-70b on v5p and H100), and to XLA:CPU's within 15% (dp, fsdp, fsdp+tp;
remat, microbatches, Adafactor) in float32 compute: XLA:CPU keeps f32 copies of bf16 values, so
for bf16 models it reads 6-20% above this estimate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from symtune.data.pipeline import FEATURES  # int32 [batch, seq_len] each
from symtune.errors import UserError
from symtune.models.attention import attention_kernel, score_elements
from symtune.models.config import DecoderConfig
from symtune.models.platform import platform_family, traced_as
from symtune.train.mesh import MESH_AXES, RULE_PRESETS, MeshConfig, spec_for
from symtune.train.optim import OptimizerConfig



@dataclass(frozen=True)
class Layout:
    """Where the work goes: the four mesh axis sizes, the rules preset, remat and microbatches."""

    replica: int
    data: int
    fsdp: int
    tensor: int
    rules: str
    remat: str
    microbatches: int

    @property
    def mesh(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in MESH_AXES}

    @property
    def chips(self) -> int:
        return math.prod(self.mesh.values())

    def ways(self, mesh_axes: Any) -> int:
        """How many ways a PartitionSpec entry (None, an axis name or a tuple of them) splits a dimension."""
        if mesh_axes is None:
            return 1
        return math.prod(getattr(self, a) for a in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes))

    def logical_ways(self, logical: str) -> int:
        """How many ways the rules split a logical axis (e.g. act_batch, embed, act_vocab)."""
        return self.ways(dict(RULE_PRESETS[self.rules])[logical])

    def describe(self) -> str:
        axes = " ".join(f"{a}={getattr(self, a)}" for a in MESH_AXES)
        micro = f", {self.microbatches} microbatches" if self.microbatches > 1 else ""
        return f"{axes} (rules {self.rules}), remat {self.remat}{micro}"


def layout_from_config(mesh: MeshConfig, chips: int, remat: str, microbatches: int) -> Layout:
    """The configured layout on `chips` chips (-1 resolved); a UserError naming valid sizes if impossible."""
    try:
        sizes = mesh.axis_sizes(chips)
    except UserError as e:
        sizes = ", ".join(map(str, divisors(chips)))
        raise UserError(f"{e}; on {chips} chips use axis sizes from {sizes}") from None
    return Layout(**sizes, rules=mesh.rules, remat=remat, microbatches=microbatches)


@dataclass(frozen=True)
class Memory:
    """Per-chip bytes of one train step at its peak (see the module docstring)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    gathered: int
    working: int
    batch: int
    peak: str  # what the working set is

    PARTS: ClassVar[tuple[str, ...]] = ("params", "grads", "optimizer", "activations", "gathered", "working",
                                        "batch")

    @property
    def total(self) -> int:
        return sum(getattr(self, part) for part in self.PARTS)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total}


@dataclass(frozen=True)
class Residuals:
    """Bytes the backward pass keeps: per row of the batch, and weight-derived (batch-independent)."""

    layer_rows: int
    layer_weights: int
    head_rows: int  # everything outside the blocks: embedding, final norm, logits, loss
    head_weights: int


class Workload:
    """One run's model, optimizer and batch with their abstract shapes; estimates memory per layout."""

    def __init__(self, model: DecoderConfig, optimizer: OptimizerConfig, *, batch_size: int, seq_len: int,
                 steps: int, loss_fn: Callable, platform: str = "cpu"):
        """`platform` (tpu, cuda, cpu) is the compiler whose habits the estimate follows."""
        import jax
        from flax import nnx

        from symtune.models.decoder import Decoder
        from symtune.train.optim import make_optimizer

        # The attention the target runs, resolved as the model resolves it: splash on TPU, cuDNN on
        # GPU where they apply (no score-sized buffers), XLA's elsewhere (traced on one CPU device,
        # the fused CPU kernel would hide the score buffers XLA:CPU and XLA:GPU hold).
        self.traced_platform = platform_family(platform)
        with traced_as(self.traced_platform):
            kernel = attention_kernel(model.attention, (batch_size, seq_len, model.num_heads, model.head_dim),
                                      (batch_size, seq_len, model.num_kv_heads, model.head_dim), causal=True,
                                      dtype=model.dtype)
        self.attention = kernel if kernel in ("splash", "cudnn") else "xla"
        model = model.replace(attention=self.attention)
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.batch_size, self.seq_len, self.steps, self.platform = batch_size, seq_len, steps, platform
        _, params, _ = nnx.split(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0))), nnx.Param, ...)
        self.params = _flat(nnx.to_pure_dict(params))
        self.logical = {k: tuple(v) for k, v in _flat(nnx.to_pure_dict(nnx.get_partition_spec(params))).items()}
        self._param_tree = nnx.to_pure_dict(params)
        self.opt_state = jax.eval_shape(make_optimizer(optimizer, steps).init, self._param_tree)
        self._residuals: dict[DecoderConfig, Residuals] = {}

    def check(self, layout: Layout) -> None:
        """A UserError naming what the layout cannot split evenly: the batch or a parameter."""
        shards = layout.logical_ways("act_batch")
        if self.batch_size % (shards * layout.microbatches):
            raise UserError(
                f"batch {self.batch_size} does not split into {layout.microbatches} microbatch(es) on "
                f"{shards} batch shards (replica x data x fsdp); make replica*data*fsdp*microbatches one of "
                f"{', '.join(map(str, divisors(self.batch_size)))}, e.g. by raising MeshConfig.tensor")
        for path, p in self.params.items():
            for dim, (size, axes) in enumerate(zip(p.shape, self.mesh_spec(path, layout))):
                if size % layout.ways(axes):
                    raise UserError(
                        f"parameter {path} dimension {dim} has size {size}, which mesh axes {axes} "
                        f"({layout.ways(axes)} ways) do not divide; use sizes that divide {size}")

    def valid(self, layout: Layout) -> bool:
        """Whether `check` passes."""
        try:
            self.check(layout)
        except UserError:
            return False
        return True

    def mesh_spec(self, path: str, layout: Layout) -> tuple:
        """The mesh axes of each dimension of a parameter under the layout's rules."""
        return tuple(spec_for(self.logical[path], RULE_PRESETS[layout.rules]))

    def param_ways(self, layout: Layout) -> dict[str, int]:
        """How many ways each parameter is split across chips."""
        return {path: math.prod(map(layout.ways, self.mesh_spec(path, layout))) for path in self.params}

    def ways_besides_fsdp(self, path: str, layout: Layout) -> int:
        """How many ways a parameter is split by mesh axes other than fsdp (what an fsdp gather leaves)."""
        return math.prod(layout.ways(tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a != "fsdp"))
                         for axes in self.mesh_spec(path, layout) if axes is not None)

    def state_bytes(self, layout: Layout) -> tuple[int, int, int]:
        """(params, one fp32 gradient, optimizer) bytes per chip."""
        import jax

        ways = self.param_ways(layout)
        params = sum(_nbytes(p) // ways[path] for path, p in self.params.items())
        grads = sum(_size(p) * 4 // ways[path] for path, p in self.params.items())
        structure = jax.tree.structure(self._param_tree)

        def is_params_like(node) -> bool:
            return jax.tree.structure(node) == structure

        optimizer = 0
        for node in jax.tree.leaves(self.opt_state, is_leaf=is_params_like):
            if not is_params_like(node):
                optimizer += _nbytes(node)
                continue
            for path, x in _flat(node).items():
                optimizer += _nbytes(x) // (ways[path] if x.shape == self.params[path].shape else 1)
        return params, grads, optimizer

    def memory(self, layout: Layout) -> Memory:
        """The per-chip estimate for a valid layout."""
        import jax.numpy as jnp

        c = self.model
        params, grads_one, optimizer = self.state_bytes(layout)
        grads = grads_one * (2 if layout.microbatches > 1 else 1)
        rows = self.batch_size // layout.logical_ways("act_batch")
        micro_rows = rows // layout.microbatches
        fsdp = layout.logical_ways("embed")
        saved, full = self.residuals(layout, layout.remat), self.residuals(layout, "none")
        activations = (micro_rows * (saved.head_rows + c.num_layers * saved.layer_rows)
                       + (saved.head_weights + c.num_layers * saved.layer_weights) // fsdp)

        compute_bytes = jnp.dtype(c.dtype).itemsize
        ways = self.param_ways(layout)
        local = {path: _size(p) // ways[path] for path, p in self.params.items()}
        # Under fsdp the output layer gathers its gradient (and, with microbatches, its weights:
        # XLA hoists that all-gather out of the microbatch loop) before reducing.
        head_matrix = max(n for path, n in local.items() if "vocab" in self.logical[path])
        head = (micro_rows * self.seq_len * (c.vocab_size // layout.logical_ways("act_vocab")) * 4
                + head_matrix * (fsdp - 1) * (4 + (compute_bytes if layout.microbatches > 1 else 0)))
        layer = sum(n for path, n in local.items() if "layers" in self.logical[path]) // c.num_layers
        gathered = 0
        if self.platform == "tpu" and layout.microbatches > 1:
            gathered = compute_bytes * sum(_size(p) // self.ways_besides_fsdp(path, layout)
                                           for path, p in self.params.items() if "layers" in self.logical[path])
        # XLA's attention backward holds two f32 score-sized buffers (the gradients of the
        # probabilities and of the scores) besides the layer's cotangents; splash none; cuDNN's
        # writes the gradient of its mask bias, one [T, S] plane per row in the compute dtype.
        heads = c.num_heads // layout.logical_ways("act_heads")
        scores = {"splash": 0, "cudnn": compute_bytes * self.seq_len ** 2}.get(
            self.attention, 2 * 4 * heads * score_elements(self.seq_len, causal=True, block=c.causal_block))
        block = (micro_rows * (max(full.layer_rows // 2, full.layer_rows - saved.layer_rows) + scores)
                 + layer * (fsdp - 1) * (4 + compute_bytes))
        # With microbatches the updates reuse the microbatch gradient's buffer.
        update = (grads_one if layout.microbatches == 1 else 0) - activations
        peaks = {"the output layer's backward": head, "one block's backward": block, "the optimizer update": update}
        peak = max(peaks, key=peaks.get)
        batch = rows * self.seq_len * 4 * len(FEATURES)
        return Memory(params, grads, optimizer, activations, gathered, peaks[peak], batch, peak)

    def residuals(self, layout: Layout, policy: str) -> Residuals:
        """Residual bytes at one chip's shapes, from four abstract traces (1 or 2 layers x 1 or 2 rows)."""
        c = self.model
        local = c.replace(
            num_heads=c.num_heads // layout.logical_ways("act_heads"),
            num_kv_heads=c.num_kv_heads // layout.logical_ways("act_heads"),
            mlp_dim=c.mlp_dim // layout.logical_ways("act_mlp"),
            vocab_size=c.vocab_size // layout.logical_ways("act_vocab"),
            remat_policy=policy,
        )
        if local not in self._residuals:
            r = {(n, b): self._saved_bytes(local.replace(num_layers=n), b) for n in (1, 2) for b in (1, 2)}
            layer_rows = r[2, 2] - r[1, 2] - r[2, 1] + r[1, 1]
            layer_weights = r[2, 1] - r[1, 1] - layer_rows
            head_rows = r[1, 2] - r[1, 1] - layer_rows
            head_weights = r[1, 1] - head_rows - layer_rows - layer_weights
            self._residuals[local] = Residuals(layer_rows, layer_weights, head_rows, head_weights)
        return self._residuals[local]

    def _saved_bytes(self, config: DecoderConfig, rows: int) -> int:
        import jax
        import jax.numpy as jnp
        from flax import nnx
        from jax._src.ad_checkpoint import saved_residuals  # behind jax.ad_checkpoint.print_saved_residuals

        from symtune.models.decoder import Decoder

        graphdef, params, other = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))),
                                            nnx.Param, ...)
        batch = {k: jax.ShapeDtypeStruct((rows, self.seq_len), jnp.int32) for k in FEATURES}

        def loss(p, b):
            return self.loss_fn(nnx.merge(graphdef, p, other), b, jax.random.key(0))["loss"]

        with traced_as(self.traced_platform):
            residuals = saved_residuals(loss, params, batch)
        return sum(_nbytes(aval) for aval, source in residuals if not source.startswith("from the argument"))

    def step_flops(self) -> float:
        """Model FLOPs of one step (forward and backward; remat recompute not counted)."""
        from symtune.models.presets import flops_per_token

        return flops_per_token(self.model, self.seq_len) * self.batch_size * self.seq_len


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _size(x) -> int:
    return math.prod(x.shape)


def _nbytes(x) -> int:
    return _size(x) * x.dtype.itemsize  # numpy and JAX dtypes, PRNG keys included


def _flat(tree) -> dict[str, Any]:
    import jax
    from jax.sharding import PartitionSpec

    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}
