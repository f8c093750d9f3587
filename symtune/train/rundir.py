"""What a `symtune train` run directory holds, and how later stages (eval, export) read it back.

RUN_DIR/
  model.json          the DecoderConfig, the vocabulary spec and the prompt attention the run
                      trained with (`ModelSpec`)
  config.gin          the operative gin config
  run.json            the run summary (mesh, parameter count, memory, metric history)
  checkpoints/<step>/ orbax checkpoints of the train state (see symtune.train.checkpoint)
  tensorboard/        metrics

RUN_DIR may be local or on a bucket (gs://...): paths go through etils.epath.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

from etils import epath

from symtune.errors import UserError
from symtune.models.config import DecoderConfig

MODEL_FILE = "model.json"


def run_path(run_dir: str | epath.PathLike) -> epath.Path:
    """RUN_DIR as an epath: local paths made absolute, bucket URLs kept as they are."""
    path = epath.Path(run_dir)
    return path if "://" in str(run_dir) else path.resolve()


class ModelSpec(NamedTuple):
    """What later stages need to rebuild and prompt a run's model."""

    config: DecoderConfig
    vocabulary: str  # `default`, `byte`, `spm:PATH` or `hf:PATH`
    prefix_lm: bool = False  # trained with bidirectional attention over the inputs (PrefixLM)


def write_model_spec(run_dir: str | Path, spec: ModelSpec) -> epath.Path:
    """Writes RUN_DIR/model.json."""
    path = run_path(run_dir) / MODEL_FILE
    fields = {"config": dataclasses.asdict(spec.config), "vocabulary": spec.vocabulary,
              "prefix_lm": spec.prefix_lm}
    path.write_text(json.dumps(fields, indent=2) + "\n")
    return path


def read_model_spec(run_dir: str | Path) -> ModelSpec:
    """The ModelSpec of a training run (or export) directory."""
    path = run_path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a training run directory (no {MODEL_FILE}); pass the "
                        "--run_dir of a `symtune train` run")
    fields: dict[str, Any] = json.loads(path.read_text())
    # Runs written before prefix_lm was recorded were all causal.
    return ModelSpec(DecoderConfig(**fields["config"]), fields["vocabulary"], fields.get("prefix_lm", False))


def latest_checkpoint(run_dir: str | Path) -> epath.Path:
    """RUN_DIR/checkpoints/<step> of the newest committed step (what `restore_params` reads)."""
    from symtune.train.checkpoint import CHECKPOINT_DIR, is_complete_step

    directory = run_path(run_dir) / CHECKPOINT_DIR
    steps = sorted(int(p.name) for p in directory.glob("*")
                   if p.name.isdigit() and is_complete_step(p))
    if not steps:
        raise UserError(f"no complete checkpoint in {directory}; train first (`symtune train "
                        f"--run_dir={run_dir}`)")
    return directory / str(steps[-1])
