"""One process of the two-process corrupt-step test in test_distributed.py (4 CPU devices each).

Restores the newest checkpoint of RUN_DIR (steps 1 and 2, saved by the test) with process 1
alone finding step 2's files damaged (as when only its shards are): both processes must agree, set
the step aside and restore step 1 together, rather than wait on each other in different places.
Then reads the params export RUN_DIR/export, damaged the same way: both must refuse.
Prints one JSON line with what it restored.

usage: python multihost_restore_worker.py RUN_DIR
"""

import os
import sys

if __name__ == "__main__":  # not when the test imports abstract_state
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from multihost_worker import global_values, weights  # noqa: E402
from symtune.train import checkpoint, distributed  # noqa: E402
from symtune.train.checkpoint import Checkpointer  # noqa: E402
from symtune.train.mesh import MeshConfig, make_mesh  # noqa: E402


def abstract_state(mesh) -> dict:
    """The state the test saves, as restore targets on `mesh`."""
    return {
        "step": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P())),
        "params": {"w": jax.ShapeDtypeStruct(weights().shape, np.float32, sharding=NamedSharding(mesh, P(None, "tensor")))},
        "x": jax.ShapeDtypeStruct(global_values().shape, np.float32, sharding=NamedSharding(mesh, P("data"))),
    }


def main(run_dir: str) -> None:
    distributed.initialize(initialization_timeout_s=60)
    if jax.process_index() == 1:  # as if the shards only this process reads were damaged
        restore = ocp.StandardCheckpointHandler.restore

        def damaged(self, directory, *args, **kwargs):
            if epath.Path(directory).parent.name == "2" or epath.Path(directory).name == "export":
                raise checkpoint._Undecodable("this process's shards do not decode")
            return restore(self, directory, *args, **kwargs)

        ocp.StandardCheckpointHandler.restore = damaged
    mesh = make_mesh(MeshConfig(data=2, tensor=4))
    with Checkpointer(run_dir) as ckpt:
        state, data = ckpt.restore(None, abstract_state(mesh))
        complete = ckpt.complete_steps()
    try:  # a params read (warm start, eval, export) of an export damaged the same way
        checkpoint.restore_params(os.path.join(run_dir, "export"), abstract_state(mesh)["params"])
        refused = None
    except checkpoint.CorruptCheckpoint as e:
        refused = str(e)
    total = jax.jit(lambda s: jnp.sum(s["x"]) + jnp.sum(s["params"]["w"]), out_shardings=NamedSharding(mesh, P()))(state)
    print(json.dumps({"process": jax.process_index(), "step": int(state["step"]), "data": data,
                      "total": float(total), "complete": complete, "refused": refused}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
