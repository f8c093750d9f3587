"""Memory per chip of the paper's recipe for llama-3-8b, from the target's own compiler.

Compiles the real train step (runs/symtune_finetune + models/llama-3-8b + meshes/fsdp: Adafactor,
batch 32 x 2,560 packed tokens, remat as configured) for a TPU slice or GPU node without its
hardware (symtune.plan.targets), and prints the compiler's memory per chip against the planner's
estimate. It compiles twice more at the same tokens per step, batch 64 x 2,560 and 32 x 5,120:
`seq_scaling` is the second over the first, 1.0 when memory grows linearly with sequence length.
A compile over HBM counts with the figure from the compiler's error. The last line is one JSON
object: platform, gib_per_chip, plan_gib_per_chip, plan_ratio (estimate / compiler), seq_scaling,
compile_seconds.

    .venv/bin/python benchmarks/accelerator_memory.py [--target v5p-64 | 8xH100] [--gin.NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os

GiB = 2**30
RECIPE = ("runs/symtune_finetune", "models/llama-3-8b", "meshes/fsdp")


def compile_recipe(topology, bindings: list[str], batch: int, seq_len: int) -> tuple[dict, int]:
    """(the compiled step's figures, the planner's estimate in bytes per chip) at one batch shape."""
    from symtune.config import parse_gin
    from symtune.plan import configured_workload, lower_step
    from symtune.plan.targets import target_devices

    parse_gin(RECIPE, [*bindings, f"TrainData.batch_size={batch}", f"TrainData.seq_len={seq_len}"])
    workload, layout = configured_workload(topology)
    compiled = lower_step(workload, layout, compile=True, devices=target_devices(topology))
    print(f"{topology.name} batch {batch} x {seq_len:,}: compiler {compiled['compiler_bytes_per_chip'] / GiB:.2f} "
          f"GiB per chip{' (over HBM)' if compiled.get('out_of_memory') else ''}, estimate "
          f"{workload.memory(layout).total / GiB:.2f} GiB ({compiled['seconds']} s)", flush=True)
    return compiled, workload.memory(layout).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="v5p-64", help="a topology symtune plan accepts (default v5p-64)")
    args, bindings = parser.parse_known_args()
    bindings = [b.removeprefix("--gin.") for b in bindings]
    os.environ["JAX_PLATFORMS"] = "cpu"  # the runtime; the compiles are for the target

    from symtune.errors import UserError
    from symtune.plan.targets import INSTALL_HINT, compiler_installed
    from symtune.plan.topology import parse_topology

    topology = parse_topology(args.target)
    if not compiler_installed(topology.platform):
        raise SystemExit(f"the {topology.platform.upper()} compiler is not installed: {INSTALL_HINT}")
    try:
        recipe, estimate = compile_recipe(topology, bindings, 32, 2560)
        wide, _ = compile_recipe(topology, bindings, 64, 2560)
        long, _ = compile_recipe(topology, bindings, 32, 5120)
    except UserError as e:
        raise SystemExit(str(e)) from None
    compiler = recipe["compiler_bytes_per_chip"]
    print(json.dumps({
        "target": topology.name,
        "platform": recipe["platform"],
        "gib_per_chip": round(compiler / GiB, 2),
        "plan_gib_per_chip": round(estimate / GiB, 2),
        "plan_ratio": round(estimate / compiler, 3),
        "seq_scaling": round(long["compiler_bytes_per_chip"] / wide["compiler_bytes_per_chip"], 3),
        "compile_seconds": recipe["seconds"],
    }))


if __name__ == "__main__":
    main()
