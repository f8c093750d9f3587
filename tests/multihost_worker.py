"""One process of the two-process test in test_distributed.py (4 CPU devices each).

Joins the job through symtune.train.distributed (explicit mode from SYMTUNE_* variables), builds
a global array from process-local rows, checks a cross-process sum, then steps until the
preemption requested by a SIGTERM to process 1 alone is agreed, and saves a sharded checkpoint
together with the other process at that step. Prints one JSON line with what it saw.

usage: python multihost_worker.py RUN_DIR
"""

import os
import sys

if __name__ == "__main__":  # not when the test imports global_values / weights
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from symtune.train import checkpoint, distributed, preemption  # noqa: E402
from symtune.train.mesh import MeshConfig, batch_sharding, make_mesh, process_batch_rows  # noqa: E402

GLOBAL_ROWS, COLS = 16, 8
MAX_STEPS = 200


def global_values() -> np.ndarray:
    """The global array both processes build between them (the test recomputes it)."""
    return np.arange(GLOBAL_ROWS * COLS, dtype=np.float32).reshape(GLOBAL_ROWS, COLS)


def weights() -> np.ndarray:
    """A tensor-sharded weight; quarters keep every value exact in float32."""
    return np.arange(COLS * 12, dtype=np.float32).reshape(COLS, 12) / 4


def main(run_dir: str) -> None:
    launch = distributed.initialize(initialization_timeout_s=60)
    assert distributed.initialize() == launch  # a second call joins nothing new
    mesh = make_mesh(MeshConfig(data=2, tensor=4))
    rows_sharding = batch_sharding(mesh, 2)
    local = global_values()[process_batch_rows(mesh, GLOBAL_ROWS)]
    x = jax.make_array_from_process_local_data(rows_sharding, local, (GLOBAL_ROWS, COLS))
    w = jax.device_put(weights(), NamedSharding(mesh, P(None, "tensor")))
    total = float(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x @ w))

    preemption.install_preemption_handler()
    ckpt = checkpoint.Checkpointer(run_dir, checkpoint.CheckpointConfig(save_every_steps=0, keep=2))
    saved_at = None
    for step in range(1, MAX_STEPS):
        if step == 3 and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.02)  # stands in for a training step
        if ckpt.should_save(step):
            replicated = NamedSharding(mesh, P())
            state = {"step": jax.device_put(np.int32(step), replicated), "params": {"w": w}, "x": x}
            ckpt.save(step, state, {"start_step": step, "seed": 7})
            saved_at = step
        if preemption.preemption_requested(step):
            break
    ckpt.close()
    print(json.dumps({
        "process": jax.process_index(),
        "launch": launch.source,
        "devices": jax.device_count(),
        "total": total,
        "saved_at": saved_at,
        "topology": distributed.describe_topology(),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
