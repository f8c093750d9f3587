"""Which platform model code is being traced for: the one its step will be compiled for.

A step compiled for a TPU slice or GPU node from a CPU host (deviceless compilation) is traced
on the CPU; kernels and CPU-specific code paths choose by the target's platform, read from the
mesh in context, not by the host's backend.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_PLATFORM_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("platform", default=None)


@contextlib.contextmanager
def traced_as(platform: str):
    """Traces model code as it would run on `platform` (tpu, gpu, cpu) without a mesh of its
    devices: for planners that count a target's residuals on abstract shapes."""
    token = _PLATFORM_OVERRIDE.set(platform)
    try:
        yield
    finally:
        _PLATFORM_OVERRIDE.reset(token)


def compute_platform() -> str:
    """Where the code being traced will run: the current mesh's devices (a TPU or GPU target when
    compiling for one from a CPU host), else JAX's default backend. `gpu` for CUDA devices."""
    if _PLATFORM_OVERRIDE.get():
        return _PLATFORM_OVERRIDE.get()
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return platform_family(jax.default_backend() if device is None else device.platform)


def platform_family(platform: str) -> str:
    """`gpu` for JAX's GPU platform names (cuda, rocm), the name itself otherwise."""
    return "gpu" if platform in ("cuda", "rocm") else platform
