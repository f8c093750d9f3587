"""Fused attention for XLA:CPU: the C++ kernel in cpu_attention.cc behind `jax.ffi`, built on first use.

XLA:CPU runs attention as separate ops over whole [B, H, T, S] score arrays, each pass a round trip
through memory, and falls back to slow dots for the key gradients. The kernel keeps each block of
queries' scores in cache and fuses softmax into the dots: at the TART head's shape (32 x 516 tokens,
8 heads of 32) forward + backward take ~150 ms against ~430 ms for XLA's and ~170 ms for PyTorch's
fused CPU kernel. `attention.attend` uses it when `DecoderConfig.attention` is "auto" and the
computation is float32 on one CPU device; TPU, GPU, bfloat16 and multi-device meshes keep XLA's
attention (there the compiler's own fusions or a sharded program are what count).

The library is compiled once per machine into $SYMTUNE_KERNEL_CACHE (default
~/.cache/symtune/kernels), keyed by the source, flags, compiler, jaxlib and CPU; without a C++
compiler attention falls back to XLA's with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_attention.cc")
HEAD_DIMS = (8, 16, 32, 64, 80, 96, 128, 256)  # the head widths the kernel is instantiated for
# No -ffast-math: the kernel marks queries without keys with NaN. These let reductions vectorize.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math",
         "-fno-signed-zeros", "-std=c++17", "-shared", "-fPIC",
         # GCC keeps to 256-bit vectors on x86 unless told; the kernel's loops gain from 512.
         *(("-mprefer-vector-width=512",) if platform.machine() == "x86_64" else ()))
FORWARD, BACKWARD = "symtune_attention_fwd", "symtune_attention_bwd"


def cache_dir() -> Path:
    """Where built kernels live: $SYMTUNE_KERNEL_CACHE, else $XDG_CACHE_HOME or ~/.cache, /symtune/kernels."""
    if os.environ.get("SYMTUNE_KERNEL_CACHE"):
        return Path(os.environ["SYMTUNE_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "symtune" / "kernels"


def _cpu_flags() -> str:
    # -march=native code is only valid on CPUs with the same features.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())


def build(compiler: str) -> Path:
    """The compiled kernel library for this machine, compiling it unless the cache has it."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join(
        [SOURCE.read_text(), " ".join(FLAGS), version, importlib.metadata.version("jaxlib"), platform.machine(),
         _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"cpu_attention-{key}.so"
    if target.exists():
        return target
    log.info("building the fused CPU attention kernel into %s (once per machine)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Several processes may build at once: each writes its own file, the rename is atomic.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp],
                       capture_output=True, text=True, check=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def available() -> bool:
    """Builds (or finds), loads and registers the kernel once; False, with one warning, if that fails."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    try:
        if compiler is None:
            raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH; set CXX")
        lib = ctypes.cdll.LoadLibrary(str(build(compiler)))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        log.warning("fused CPU attention unavailable, using XLA's: %s", detail.strip()[-2000:])
        return False
    jax.ffi.register_ffi_target(FORWARD, jax.ffi.pycapsule(lib.SymtuneAttentionForward), platform="cpu")
    jax.ffi.register_ffi_target(BACKWARD, jax.ffi.pycapsule(lib.SymtuneAttentionBackward), platform="cpu")
    return True


def applies_to(q_shape: tuple, dtype) -> bool:
    """Whether `fused_attention` serves q of this shape and dtype on the CPU: float32, one device, a
    supported head width, and the kernel built (the caller checks that the step runs on the CPU)."""
    return (jnp.dtype(dtype) == jnp.float32 and q_shape[-1] in HEAD_DIMS
            and jax.sharding.get_abstract_mesh().size <= 1 and available())


def _forward(q, k, v, mask):
    if not available():
        raise RuntimeError("the fused CPU attention kernel could not be built (see the warning logged); "
                           "use DecoderConfig.attention='xla'")
    b, t, h, d = q.shape
    shapes = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32))
    return jax.ffi.ffi_call(FORWARD, shapes, vmap_method="sequential")(q, k, v, mask, scale=np.float32(d ** -0.5))


@jax.custom_vjp
def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over allowed keys: q [B, T, H, D], k/v [B, S, K, D], mask bool [B, T, S]."""
    return _forward(q, k, v, mask)[0]


def _fused_fwd(q, k, v, mask):
    out, lse = _forward(q, k, v, mask)
    return out, (q, k, v, mask, out, lse)


def _fused_bwd(residuals, d_out):
    q, k, v, mask, out, lse = residuals
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")(
        q, k, v, mask, out, lse, d_out.astype(jnp.float32), scale=np.float32(q.shape[-1] ** -0.5))
    return dq, dk, dv, None


fused_attention.defvjp(_fused_fwd, _fused_bwd)
