"""Process settings that must be in place before JAX initialises its backends."""

import atexit
import ctypes
import ctypes.util
import glob
import os
import re
import sys
import threading
from dataclasses import dataclass

import gin

from symtune.errors import UserError

# Set by the local multi-process launcher: each process's simulated device count, which wins
# over a config's own (a config written for one process would otherwise claim all of them).
ENV_CPU_DEVICES = "SYMTUNE_CPU_DEVICES"


@gin.configurable
@dataclass(frozen=True)
class HostConfig:
    """How this process sets up its host before a command starts JAX (every command reads it)."""

    cpu_devices: int | None = None  # simulate this many CPU devices (tests, laptops; $SYMTUNE_CPU_DEVICES wins)

    def __post_init__(self):
        if self.cpu_devices is not None and self.cpu_devices < 1:
            raise UserError(f"cpu_devices must be >= 1, or None for JAX's default (got {self.cpu_devices})")


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


ENV_VERBOSE = "SYMTUNE_VERBOSE"
# A native library's log line (absl/glog format): severity, MMDD, time (before absl is initialised,
# "00:00:<epoch seconds>"), thread id, file:line].
_NATIVE_LOG = re.compile(rb"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.+-]+:\d+\] ")
_ABSL_PREINIT = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def hide_native_log_lines() -> bool:
    """Keeps the INFO and WARNING lines that TensorFlow, XLA and their plugins write to stderr
    (oneDNN notices, "Could not find cuda drivers", absl's pre-init warning) off the console;
    their errors (E/F lines), Python's output and anything else pass through as they come.

    The native code writes to file descriptor 2 itself, so fd 2 becomes a pipe that a thread reads
    and forwards line by line; at exit the rest is drained. `SYMTUNE_VERBOSE=1` leaves stderr
    alone. For processes the CLI owns (not a library caller's). True if applied.
    """
    if os.environ.get(ENV_VERBOSE, "") not in ("", "0"):
        return False
    sys.stderr.flush()
    console = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward_lines, args=(read_end, console), daemon=True,
                                 name="native-log-filter")
    forwarder.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(console, 2)  # closes the pipe's last write end: the forwarder drains it and stops
        forwarder.join(timeout=5)

    global _restore_stderr
    _restore_stderr = restore
    atexit.register(restore)
    return True


_restore_stderr = None


def restore_stderr() -> None:
    """Puts the console back on fd 2 after forwarding what the filter holds: for exits that skip
    atexit (os._exit)."""
    if _restore_stderr is not None:
        _restore_stderr()


def _forward_lines(read_end: int, console: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = [line + b"\n" for line in lines if not _is_native_chatter(line)]
        # A fragment that cannot become a native log line (a progress bar, a prompt) goes out now.
        if pending and not _may_be_native_chatter(pending):
            kept.append(pending)
            pending = b""
        if kept:
            os.write(console, b"".join(kept))
    if pending and not _is_native_chatter(pending):
        os.write(console, pending)
    os.close(read_end)


def _is_native_chatter(line: bytes) -> bool:
    return line.startswith(_ABSL_PREINIT) or bool(_NATIVE_LOG.match(line))


def _may_be_native_chatter(fragment: bytes) -> bool:
    """Whether the start of a line could still turn out to be native chatter."""
    head = fragment[:len(_ABSL_PREINIT)]
    return _ABSL_PREINIT.startswith(head) or bool(re.match(rb"[IW](\d|$)", fragment))


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
