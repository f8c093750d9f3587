"""`symtune train`: one training run from gin — data, model, mesh, trainer, checkpoints, metrics.

Each subsystem is bound in gin through its own config: `RunConfig` (this module), `TrainData`
(symtune.data.pipeline), `model_config` (symtune.models.presets), `MeshConfig`, `TrainerConfig`,
`OptimizerConfig`, `CheckpointConfig`, and `PeriodicEvalConfig` (symtune.eval.hook) for
evaluation every N steps. The run directory layout is in symtune.train.rundir;
running the same command again resumes from its last complete checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gin

# Imported here, not lazily, so their gin configurables exist for overrides without a gin file.
import symtune.data.pipeline  # noqa: F401  TrainData
import symtune.eval.hook  # noqa: F401  PeriodicEvalConfig
import symtune.models.presets  # noqa: F401  model_config
import symtune.train.checkpoint  # noqa: F401  CheckpointConfig
import symtune.train.distributed  # noqa: F401  initialize (heartbeat timeout)
import symtune.train.mesh  # noqa: F401  MeshConfig
import symtune.train.optim  # noqa: F401  OptimizerConfig
import symtune.train.trainer  # noqa: F401  TrainerConfig
from symtune.errors import UserError

USES_GIN = True
VOCAB_MULTIPLE = 128  # vocab rows padded to this, so the embedding splits over tensor axes


@gin.configurable
@dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it starts; the data, model and mesh have their own configs."""

    run_dir: str = "runs/train"
    # A Hugging Face model directory, a params-only export (`symtune export`) or a training step
    # RUN_DIR/checkpoints/<step>: the initial parameters of a fresh run.
    warm_start: str | None = None
    bidirectional_prefix: bool = False  # PrefixLM attention over the inputs (causal otherwise)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run_dir", help="overrides RunConfig.run_dir")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def resolve_model_config(vocab_size: int, warm_start: str | None):
    """The gin-bound model config, its vocabulary sized to the tokenizer for a fresh model."""
    from symtune.models import hf, presets

    if warm_start and (Path(warm_start) / "config.json").is_file():
        config = hf.config_from_hf(json.loads((Path(warm_start) / "config.json").read_text()))
        overrides = gin.query_parameter("model_config.overrides") if _bound("model_config.overrides") else None
        config = config.replace(**dict(overrides or {}))
    else:
        if not _bound("model_config.preset"):
            raise UserError("no model chosen: add --gin_file=models/<preset> (e.g. models/test-tiny) "
                            "or --gin.model_config.preset=\"'test-tiny'\"")
        config = presets.model_config()
        if not warm_start:
            config = config.replace(vocab_size=padded_vocab_size(vocab_size))
    if config.vocab_size < vocab_size:
        raise UserError(f"the model has {config.vocab_size} vocabulary rows but the tokenizer has "
                        f"{vocab_size} ids; set TrainData.vocabulary to the model's tokenizer (hf:DIR)")
    return config


def padded_vocab_size(vocab_size: int) -> int:
    """The embedding rows a fresh model gets for a tokenizer of `vocab_size` ids."""
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def check_positions(seq_len: int, config) -> None:
    """A UserError when training sequences are longer than the model's positions."""
    if seq_len > config.max_positions:
        raise UserError(f"TrainData.seq_len={seq_len} exceeds the model's max_positions="
                        f"{config.max_positions}; lower seq_len or override max_positions")


def _bound(name: str) -> bool:
    try:
        gin.query_parameter(name)
        return True
    except ValueError:
        return False


def warm_start_params(path: str, abstract_params: Any) -> Any:
    """Parameters for a fresh run from an HF model directory or an orbax params checkpoint, read
    sharded: each process reads only what its devices hold."""
    import jax

    from symtune.models import hf
    from symtune.train.checkpoint import restore_params

    if not (Path(path) / "config.json").is_file():
        return restore_params(path, abstract_params)
    params = hf.read_sharded_params(path, abstract_params)
    missing = set(_paths(abstract_params)) - set(_paths(params))
    if missing:
        raise UserError(f"warm start {path}: the checkpoint has no values for {', '.join(sorted(missing)[:3])}")
    return jax.tree.map(lambda _, value: value, abstract_params, params)


def _paths(tree: Any) -> list[str]:
    import jax

    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def initial_state(run: RunConfig, trainer, checkpointer, seed: int, *, verbose: bool) -> tuple[dict, int]:
    """(train state, first step): the newest readable checkpoint's, else a fresh (or warm-started)
    state at 0. Corrupt checkpoints are set aside by the checkpointer; if all are, it raises."""
    restored = checkpointer.restore(None, trainer.abstract_state)
    if restored is None:
        if not run.warm_start:
            return trainer.init_state(), 0
        state = trainer.init_state(warm_start_params(run.warm_start, trainer.abstract_state["params"]))
        if verbose:
            print(f"warm start from {run.warm_start}")
        return state, 0
    state, data_state = restored
    if data_state.get("seed", seed) != seed:
        raise UserError(f"{run.run_dir} was trained with TrainData.seed={data_state['seed']}, not "
                        f"{seed}; use the same seed or a new run_dir")
    start = int(data_state["start_step"])
    if verbose:
        print(f"resuming from step {start} in {checkpointer.directory}")
    return state, start


def train(run: RunConfig, hooks: Sequence[Callable] = ()) -> dict:
    """Runs (or resumes) training and returns the run summary."""
    import jax
    from clu import metric_writers

    from symtune.data.pipeline import TrainData
    from symtune.data.vocab import get_vocabulary
    from symtune.eval.hook import periodic_eval_hook
    from symtune.models import hf, presets
    from symtune.models.decoder import Decoder
    from symtune.train import distributed
    from symtune.train.checkpoint import CheckpointConfig, Checkpointer
    from symtune.train.lm_objective import lm_loss
    from symtune.train.loop import train_loop
    from symtune.train.mesh import MeshConfig, describe_mesh, logical_rules, make_mesh, process_batch_rows
    from symtune.train.optim import OptimizerConfig
    from symtune.train.rundir import ModelSpec, run_path, write_model_spec
    from symtune.train.trainer import Trainer, TrainerConfig

    distributed.initialize()
    run_dir = run_path(run.run_dir)
    data = TrainData()
    vocab_spec = data.vocabulary if isinstance(data.vocabulary, str) else "default"
    vocabulary = get_vocabulary(data.vocabulary)
    model_config = resolve_model_config(vocabulary.vocab_size, run.warm_start)
    check_positions(data.seq_len, model_config)
    if run.warm_start and (Path(run.warm_start) / "config.json").is_file():
        hf.check_checkpoint(run.warm_start)  # before anything is written to the run directory
    mesh_config = MeshConfig()
    mesh = make_mesh(mesh_config)
    trainer = Trainer(
        lambda rngs: Decoder(model_config, rngs=rngs),
        functools.partial(lm_loss, bidirectional_prefix=run.bidirectional_prefix),
        mesh=mesh,
        rules=logical_rules(mesh_config.rules),
        config=TrainerConfig(),
        optimizer=OptimizerConfig(),
        flops_per_token=presets.flops_per_token(model_config, data.seq_len),
    )
    batches = data.batches(start_step=0, rows=process_batch_rows(mesh, data.batch_size))
    trainer.compile_step(trainer.global_batch(batches.batch(0)))
    memory = trainer.memory_per_device()
    is_chief = jax.process_index() == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "parameters": trainer.param_count,
        "mesh": dict(mesh.shape),
        "rules": mesh_config.rules,
        "devices": mesh.devices.size,
        "processes": jax.process_count(),
        "memory_per_device_bytes": memory,
        "datasets_missing": batches.missing,
    }
    if is_chief:
        write_model_spec(run_dir, ModelSpec(model_config, vocab_spec, run.bidirectional_prefix))
        (run_dir / "config.gin").write_text(gin.operative_config_str())
        print(f"mesh: {describe_mesh(mesh)} (rules {mesh_config.rules})")
        print(f"model: {trainer.param_count:,} parameters, {model_config.num_layers} layers, "
              f"width {model_config.embed_dim}, vocabulary {model_config.vocab_size}")
        print(f"per-device memory (XLA): arguments {human_bytes(memory['arguments'])}, "
              f"temporaries {human_bytes(memory['temporaries'])}")
        if batches.missing:
            print(f"data: left out of the mixture (not found): {', '.join(batches.missing)}")

    checkpointer = Checkpointer(run_dir, CheckpointConfig())
    checkpointer.install_preemption_handler()
    state, start = initial_state(run, trainer, checkpointer, data.seed, verbose=is_chief)
    batches.step = start
    eval_hook = periodic_eval_hook(vocabulary, max_length=data.seq_len, prefix_lm=run.bidirectional_prefix)
    writer = metric_writers.create_default_writer(str(run_dir / "tensorboard"), just_logging=not is_chief)
    try:
        state, result = train_loop(
            trainer, state, batches,
            start_step=start,
            checkpointer=checkpointer,
            data_state=lambda step: {"start_step": step, "seed": data.seed},
            writer=writer,
            hooks=[*hooks, eval_hook] if eval_hook else hooks,
        )
    finally:
        checkpointer.close()
    summary.update(last_step=result.last_step, preempted=result.preempted, history=result.history)
    if is_chief:
        (run_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
        word = "preempted; rerun to resume" if result.preempted else "done"
        print(f"training {word} at step {result.last_step}; outputs in {run_dir}")
    return summary


def run(args: argparse.Namespace) -> int:
    config = RunConfig()
    if args.run_dir:
        config = dataclasses.replace(config, run_dir=args.run_dir)
    train(config)
    return 0
