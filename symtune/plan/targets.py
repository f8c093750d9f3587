"""Target devices for deviceless (ahead-of-time) compilation: a TPU slice or GPU cluster by name.

XLA compiles for a TPU slice (with libtpu) or a GPU node (with the CUDA plugin) on a machine that
has neither: `jax.experimental.topologies` describes the target's devices, a mesh over them and
abstract inputs make `jit(...).lower(...).compile()` run the target's compiler, and the compiled
program's `memory_analysis()` is that compiler's own account of memory per chip. Slice shapes and
chips per host are data (targets/tpu.json); each GPU is a `GpuTargetConfigProto` text file
(targets/<gpu>.txtpb). Only planning and benchmarks import this module; training never does.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from symtune.errors import UserError
from symtune.plan.topology import Topology, generation

DATA = Path(__file__).with_name("targets")
GPUS_PER_HOST = 8
INSTALL_HINT = "pip install -e '.[aot]' -c constraints.txt"

# The Python module each compiler comes in.
_COMPILER_MODULE = {"tpu": "libtpu", "cuda": "jax_plugins.xla_cuda12"}


def compiler_installed(platform: str) -> bool:
    """Whether the target compiler for `platform` (tpu, cuda) is importable in this environment."""
    try:
        return importlib.util.find_spec(_COMPILER_MODULE[platform]) is not None
    except ModuleNotFoundError:  # the parent package (jax_plugins) is absent
        return False


@functools.cache
def tpu_slices() -> dict[str, Any]:
    """The TPU generations of targets/tpu.json, by the generation name topologies use (v5p, ...)."""
    return {k: v for k, v in json.loads((DATA / "tpu.json").read_text()).items() if not k.startswith("_")}


def gpu_target_config(topology: Topology) -> str:
    """The GpuTargetConfigProto text for the topology's GPU."""
    return (DATA / f"{generation(topology.accelerator).lower()}.txtpb").read_text()


def target_devices(topology: Topology) -> list:
    """The topology's devices as its compiler sees them (no hardware needed).

    A UserError when no standard slice has that many chips; RuntimeError when the compiler is not
    installed (check `compiler_installed` first)."""
    from jax.experimental import topologies

    platform = topology.platform
    if not compiler_installed(platform):
        raise RuntimeError(f"the {platform.upper()} compiler is not installed ({INSTALL_HINT})")
    if platform == "tpu":
        # No chip is claimed when compiling for one: let several processes (a plan beside a test run)
        # load libtpu at once instead of failing on its single-user lock file.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        name = generation(topology.accelerator)
        spec = tpu_slices()[name]
        slice_ = spec["slices"].get(str(topology.chips))
        if slice_ is None:
            sizes = ", ".join(f"{name}-{int(n) * topology.accelerator.cores_per_chip}" for n in spec["slices"])
            raise UserError(f"{topology.name}: no standard {name} slice has {topology.chips} "
                            f"chips to compile for; use one of {sizes}")
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{spec['name']}:{slice_['shape']}",
            chip_config_name=spec["chip_config"], chips_per_host_bounds=tuple(slice_["chips_per_host"]),
            num_slices=1)
    else:
        per_host = min(topology.chips, GPUS_PER_HOST)
        description = topologies.get_topology_desc(
            platform="cuda", target_config=gpu_target_config(topology),
            topology=f"1x{topology.chips // per_host}x{per_host}")
    devices = list(description.devices)
    if len(devices) != topology.chips:
        raise RuntimeError(f"{topology.name}: the {platform} compiler described {len(devices)} devices, "
                           f"expected {topology.chips}")
    return devices


# XLA:TPU's words when a program needs more HBM than the chip has, e.g. "RESOURCE_EXHAUSTED: Ran
# out of memory on HBM, the total memory required for HLO temporaries (128.94G) exceeds available
# HBM (95.74G)."
_OUT_OF_MEMORY = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\) exceeds", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def out_of_memory_temporaries(error: BaseException) -> int | None:
    """The temporaries per chip an over-budget TPU compile needed, from the compiler's error; else None."""
    match = _OUT_OF_MEMORY.search(str(error))
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
