"""One process of the sharded warm-start test in test_train_run.py (launched by the local launcher).

Builds the Trainer for a HF model directory on an fsdp mesh over all processes' devices, reads
the checkpoint through `warm_start_params` and writes one JSON file with how far its resident
memory grew meanwhile (the kernel's peak count, reset before), the bytes its devices hold and
whether every shard it holds equals the file.

usage: python warm_start_worker.py MODEL_DIR OUT_DIR
"""

import json
import resource
import sys
from pathlib import Path

import jax
import numpy as np

from symtune.models import hf
from symtune.models.decoder import Decoder
from symtune.train import distributed
from symtune.train.lm_objective import lm_loss
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
from symtune.train.optim import OptimizerConfig
from symtune.train.run import warm_start_params
from symtune.train.trainer import Trainer, TrainerConfig


def resident_bytes() -> int:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def reset_peak() -> None:
    """Starts the kernel's peak-resident count (VmHWM) afresh from the current resident size."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_bytes() -> int:
    """The peak resident memory since `reset_peak` (VmHWM, in kB in /proc/self/status)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main(model_dir: str, out_dir: str) -> None:
    distributed.initialize()
    config = hf.config_from_hf(json.loads((Path(model_dir) / "config.json").read_text()))
    mesh = make_mesh(MeshConfig(data=1, fsdp=-1, rules="fsdp"))
    trainer = Trainer(lambda rngs: Decoder(config, rngs=rngs), lm_loss, mesh=mesh, rules=logical_rules("fsdp"),
                      config=TrainerConfig(steps=1), optimizer=OptimizerConfig(name="adamw"))
    before = resident_bytes()
    reset_peak()
    params = warm_start_params(model_dir, trainer.abstract_state["params"])
    jax.block_until_ready(params)
    grown = peak_bytes() - before

    _, expected = hf.import_hf(model_dir)  # the whole file, after the measurement
    held = equal = 0
    for (path, value), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected)):
        for shard in value.addressable_shards:
            held += shard.data.nbytes
            equal += np.array_equal(np.asarray(shard.data), want[shard.index])
    shards = sum(len(v.addressable_shards) for v in jax.tree.leaves(params))
    (Path(out_dir) / f"{jax.process_index()}.json").write_text(json.dumps(
        {"grown": grown, "held": held, "shards": shards, "equal": equal}))


if __name__ == "__main__":
    main(*sys.argv[1:])
