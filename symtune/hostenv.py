"""Process settings that must be in place before JAX initialises its backends."""

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
