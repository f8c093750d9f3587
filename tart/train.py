"""`tart train`: the reasoning head on synthetic logistic regression, through symtune's Trainer.

The batch fed to the step is only (step, row) ids; the loss samples the sequences on device from
them, so data costs no host time and a resumed run sees exactly the sequences it would have.
Each length of the curriculum gets its own Trainer (one compiled step per sequence shape); they
share the train state, checkpoints and metrics. At the end the head's params are exported with
its config (`head.json`), the format `tart eval` loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import optax
from etils import epath
from flax import nnx

from symtune.errors import UserError
from symtune.train.checkpoint import CheckpointConfig, Checkpointer, export_params, restore_params
from symtune.train.mesh import MeshConfig, describe_mesh, logical_rules, make_mesh, process_batch_rows
from symtune.train.optim import OptimizerConfig
from symtune.train.rundir import run_path
from symtune.train.trainer import Trainer, TrainerConfig
from tart.head import HeadConfig, TartHead, head_config
from tart.synthetic import SyntheticConfig, sample_batch, step_batches

USES_GIN = True
HEAD_FILE = "head.json"
PARAMS_DIR = "params"


@gin.configurable
@dataclass(frozen=True)
class TartRunConfig:
    """Where to write (a local folder or a bucket URL, gs://...) and the global batch size
    (sequences per step)."""

    run_dir: str = "runs/tart"
    batch_size: int = 128


def synthetic_loss(config: SyntheticConfig, examples: int):
    """loss_fn(head, batch, key) for the Trainer: summed BCE over every x position of sequences
    with `examples` examples."""

    def loss_fn(head: TartHead, batch, key):
        del key  # the sequences' randomness comes from (seed, step, row), not the step key
        xs, ys = sample_batch(config, batch["step"], batch["row"], examples)
        logits = head(xs, ys)
        correct = ((logits > 0) == (ys > 0.5)).astype(jnp.float32)
        return {
            "loss": jnp.sum(optax.sigmoid_binary_cross_entropy(logits, ys)),
            "weight": jnp.asarray(ys.size, jnp.float32),
            "correct": jnp.sum(correct),
            "tokens": jnp.asarray(2.0 * ys.size),
        }

    return loss_fn


def check_compatible(head: HeadConfig, synthetic: SyntheticConfig) -> None:
    if head.dims != synthetic.dims or head.max_examples < synthetic.max_examples:
        raise UserError(
            f"the head takes {head.dims}-dim inputs and up to {head.max_examples} examples, but the "
            f"synthetic data has dims={synthetic.dims} and max_examples={synthetic.max_examples}; "
            "bind SyntheticConfig.dims / max_examples to match the head")


def build_trainer(head: HeadConfig, synthetic: SyntheticConfig, examples: int | None = None,
                  mesh_config: MeshConfig | None = None, trainer_config: TrainerConfig | None = None,
                  optimizer: OptimizerConfig | None = None) -> Trainer:
    """The Trainer for `head` on `synthetic` sequences of `examples` (default: the most) examples.

    Configs default to their gin bindings. The schedule's horizon is the optimizer's decay_steps,
    else this Trainer's steps: a curriculum's stage trainers set it to the whole run.
    """
    from symtune.models.presets import flops_per_token

    check_compatible(head, synthetic)
    examples = examples or synthetic.max_examples
    mesh_config = mesh_config or MeshConfig()
    trainer_config = trainer_config or TrainerConfig()
    optimizer = optimizer or OptimizerConfig()
    optimizer = dataclasses.replace(optimizer, decay_steps=optimizer.decay_steps or trainer_config.steps)
    return Trainer(
        lambda rngs: TartHead(head, rngs=rngs),
        synthetic_loss(synthetic, examples),
        mesh=make_mesh(mesh_config),
        rules=logical_rules(mesh_config.rules),
        config=trainer_config,
        optimizer=optimizer,
        flops_per_token=flops_per_token(head.decoder(), 2 * examples),
    )


def save_head(head: HeadConfig, params, out_dir: str | Path) -> epath.Path:
    """Writes `head.json` and a params-only checkpoint (float32) that `load_head` reads."""
    out_dir = run_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    export_params(params, out_dir / PARAMS_DIR, dtype=None, overwrite=True)
    (out_dir / HEAD_FILE).write_text(json.dumps(dataclasses.asdict(head), indent=2) + "\n")
    return out_dir


def load_head(path: str | Path) -> TartHead:
    """A head saved by `save_head` (a `tart train` run's head/ directory or a shipped one)."""
    path = run_path(path)
    if not (path / HEAD_FILE).is_file():
        raise UserError(f"{path} is not a TART head directory (no {HEAD_FILE}); pass a `tart train` "
                        "run's head/ directory")
    config = HeadConfig(**json.loads((path / HEAD_FILE).read_text()))
    model = nnx.eval_shape(lambda: TartHead(config, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, restore_params(path / PARAMS_DIR, abstract))
    nnx.update(model, state)
    return model


def train(run: TartRunConfig) -> dict:
    """Runs (or resumes) training of the head and exports it; returns the run summary."""
    from clu import metric_writers

    from symtune.train import distributed
    from symtune.train.loop import train_loop

    distributed.initialize()
    run_dir = run_path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    head, synthetic = head_config(), SyntheticConfig()
    trainer_config, mesh_config, optimizer = TrainerConfig(), MeshConfig(), OptimizerConfig()
    total = trainer_config.steps
    is_chief = jax.process_index() == 0
    checkpointer = Checkpointer(run_dir, CheckpointConfig())
    checkpointer.install_preemption_handler()
    writer = metric_writers.create_default_writer(str(run_dir / "tensorboard"), just_logging=not is_chief)
    latest = checkpointer.latest_step()
    state, start, result = None, 0, None
    history: list[dict] = []
    for first, end, examples in synthetic.length_stages(total):
        if latest is not None and latest >= end:
            continue
        trainer = build_trainer(head, synthetic, examples, mesh_config,
                                dataclasses.replace(trainer_config, steps=end),
                                dataclasses.replace(optimizer, decay_steps=optimizer.decay_steps or total))
        if state is None:
            if is_chief:
                print(f"mesh: {describe_mesh(trainer.mesh)}")
                print(f"head: {head}, {trainer.param_count:,} parameters")
            if latest is not None:
                state, data_state = checkpointer.restore(latest, trainer.abstract_state)
                start = int(data_state["start_step"])
                if is_chief:
                    print(f"resuming from step {start} in {run_dir}")
            else:
                state = trainer.init_state()
        begin = max(first, start)
        if is_chief:
            print(f"steps {begin}-{end}: {examples} examples per sequence", flush=True)
        batches = step_batches(process_batch_rows(trainer.mesh, run.batch_size), begin)
        state, result = train_loop(
            trainer, state, batches, start_step=begin, checkpointer=checkpointer,
            data_state=lambda step: {"start_step": step}, writer=writer,
        )
        history += result.history
        if result.preempted:
            break
    preempted = bool(result and result.preempted)
    last = result.last_step if result else latest
    if not preempted:
        if state is None:  # finished earlier: export from the last checkpoint
            trainer = build_trainer(head, synthetic, None, mesh_config, trainer_config, optimizer)
            state, _ = checkpointer.restore(latest, trainer.abstract_state)
        save_head(head, state["params"], run_dir / "head")
    checkpointer.close()
    summary = {"head": dataclasses.asdict(head), "last_step": last, "preempted": preempted, "history": history}
    if is_chief:
        (run_dir / "config.gin").write_text(gin.operative_config_str())
        (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
        word = "preempted; rerun to resume" if preempted else f"done; head in {run_dir / 'head'}"
        print(f"training {word} at step {last}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run_dir", help="overrides TartRunConfig.run_dir")


def run(args: argparse.Namespace) -> int:
    config = TartRunConfig()
    if args.run_dir:
        config = dataclasses.replace(config, run_dir=args.run_dir)
    train(config)
    return 0
