"""Process settings that must be in place before JAX initialises its backends."""

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import dataclass

import gin

# Set by the local multi-process launcher: each process's simulated device count, which wins
# over a config's own (a config written for one process would otherwise claim all of them).
ENV_CPU_DEVICES = "SYMTUNE_CPU_DEVICES"


@gin.configurable
@dataclass(frozen=True)
class HostConfig:
    """How this process sets up its host before a command starts JAX (every command reads it)."""

    cpu_devices: int | None = None  # simulate this many CPU devices (tests, laptops; $SYMTUNE_CPU_DEVICES wins)


def apply_host_config(config: HostConfig) -> None:
    """Simulates $SYMTUNE_CPU_DEVICES if set, else `config.cpu_devices` CPU devices (None: JAX's default)."""
    env = os.environ.get(ENV_CPU_DEVICES)
    count = int(env) if env else config.cpu_devices
    if count:
        simulate_cpu_devices(count)


def simulate_cpu_devices(count: int) -> None:
    """Makes JAX see `count` CPU devices (for demos and tests on a machine without accelerators).

    Works until JAX first creates its backends (importing JAX is fine)."""
    if "jax" in sys.modules:
        import jax
        from jax._src import xla_bridge

        if not xla_bridge.backends_are_initialized():
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", count)
            return
        if jax.default_backend() == "cpu" and len(jax.devices()) == count:
            return
        raise RuntimeError("simulate_cpu_devices must run before JAX creates its backends")
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={count}")
    os.environ["XLA_FLAGS"] = " ".join(flags)


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ start-up chatter off the console and TF off any accelerator."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
               "GLIBC_TUNABLES", "LD_PRELOAD")
_ACCELERATOR_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def runs_on_cpu_only() -> bool:
    """Whether JAX will compute on the CPU: JAX_PLATFORMS says only cpu, or is unset on a host
    without GPU or TPU device nodes."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return set(platforms.lower().split(",")) == {"cpu"}
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def retain_freed_memory() -> bool:
    """On glibc, keeps memory the process frees for reuse instead of unmapping it; True if applied.

    XLA:CPU allocates each step's temporaries as one large block (3.8 GB for a tart-paper step),
    which glibc maps fresh per step and unmaps after: every step then page-faults it in again
    (930K faults, ~2 s of system time per TART step, 2.5 s more after 10 s idle, when the host
    has reclaimed the pages). One arena, no mmap'd blocks and no trimming keep it resident: TART
    step 9.0 -> 8.4 s with no idle penalty, pythia-70m fwd+bwd 1.58 -> 1.42 s. The cost: the
    process keeps its peak heap. Must run before any other thread allocates (each thread keeps
    the arena it first used); left alone if the user set malloc's environment themselves.
    """
    if any(name in os.environ for name in _MALLOC_ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))  # -1: never trim
