"""A step of a `symtune train` run directory as a model, for evaluation and export.

`--checkpoint` takes RUN_DIR (its newest complete step) or RUN_DIR/checkpoints/<step>; the
parameters are restored straight onto the mesh's shardings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from symtune.errors import UserError
from symtune.models.decoder import Decoder
from symtune.train.checkpoint import CHECKPOINT_DIR, is_complete_step, restore_params
from symtune.train.rundir import MODEL_FILE, ModelSpec, latest_checkpoint, read_model_spec, run_path


@dataclass(frozen=True)
class RunCheckpoint:
    """One complete step of a training run directory."""

    run_dir: epath.Path
    step_dir: epath.Path

    @property
    def step(self) -> int:
        return int(self.step_dir.name)


def find_checkpoint(path: str | Path) -> RunCheckpoint:
    """RUN_DIR (newest complete step) or RUN_DIR/checkpoints/<step>; UserError otherwise."""
    path = run_path(path)
    if path.parent.name == CHECKPOINT_DIR and (path.parent.parent / MODEL_FILE).is_file():
        if not is_complete_step(path):
            raise UserError(f"{path} is not a complete checkpoint step; pass the run directory instead")
        return RunCheckpoint(path.parent.parent, path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist; pass a `symtune train` run directory")
    read_model_spec(path)  # a one-line UserError when this is not a run directory
    return RunCheckpoint(path, latest_checkpoint(path))


def restore_decoder(checkpoint: RunCheckpoint, mesh: Mesh,
                    **overrides: Any) -> tuple[Decoder, ModelSpec]:
    """(Decoder holding the step's params, placed by the active logical rules; the run's ModelSpec).

    `overrides` replace config fields that do not change the params (e.g. dtype="float32"). Call
    inside `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)`.
    """
    spec = read_model_spec(checkpoint.run_dir)
    spec = spec._replace(config=spec.config.replace(**overrides))
    config = spec.config
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    # The train state holds params as a pure dict (see symtune.train.trainer).
    target = jax.tree.map(
        lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
        nnx.to_pure_dict(params), nnx.to_pure_dict(nnx.get_partition_spec(params)))
    restored = restore_params(checkpoint.step_dir, target)
    return nnx.merge(graphdef, restored, rest), spec
