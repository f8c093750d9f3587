"""Process settings that must be in place before JAX initialises its backends."""

import atexit
import ctypes
import ctypes.util
import glob
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import gin

from symtune import stderr_filter
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


def quiet_console() -> bool:
    """The CLI's stderr policy, for processes it owns (not a library caller's): native libraries'
    start-up lines and the echoes of a failed checkpoint write are dropped; `SYMTUNE_VERBOSE=1`
    leaves stderr alone. True if applied."""
    if os.environ.get(ENV_VERBOSE, "") not in ("", "0"):
        return False
    hide_native_log_lines()
    hide_echoes_of_failed_writes()
    return True


def hide_native_log_lines() -> None:
    """Keeps the INFO and WARNING lines that TensorFlow, XLA and their plugins write to stderr
    (oneDNN notices, "Could not find cuda drivers", absl's pre-init warning) off the console;
    their errors (E/F lines), Python's output and anything else pass through as they come.

    The native code writes to file descriptor 2 itself, so fd 2 becomes a pipe read by a small
    filter process (`symtune.stderr_filter`) that forwards line by line and outlives this one: the
    last lines of a crash (an abort's message) reach the console too.
    """
    sys.stderr.flush()
    console = os.dup(2)
    read_end, write_end = os.pipe()
    # Its own session: Ctrl-C and signals sent to this process group leave it forwarding until
    # every writer is gone (end of file), so the lines written while stopping are not lost.
    forwarder = subprocess.Popen([sys.executable, "-I", "-S", stderr_filter.__file__], stdin=read_end,
                                 stdout=console, stderr=console, close_fds=True, start_new_session=True)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(console, 2)  # closes this process's write end: the filter drains the pipe and ends
        try:
            forwarder.wait(timeout=5)
        except subprocess.TimeoutExpired:  # a child of ours still holds the pipe: it keeps forwarding
            pass

    global _restore_stderr
    _restore_stderr = restore
    atexit.register(restore)


_restore_stderr = None


def restore_stderr() -> None:
    """Puts the console back on fd 2 after the filter has forwarded what it holds: for exits that
    skip atexit (os._exit)."""
    if _restore_stderr is not None:
        _restore_stderr()


def hide_echoes_of_failed_writes() -> None:
    """When one write of a save fails (disk full, permission, bucket), orbax's threads log it,
    asyncio logs each sibling write's failure, and tensorstore's late callbacks into orbax's closed
    event loop print tracebacks: hundreds of lines for one error, which the save reports itself
    (and the CLI as one line). Those echoes are dropped; everything else passes. Process-wide."""
    global _echoes_quiet
    if _echoes_quiet:
        return
    _echoes_quiet = True
    logging.getLogger("absl").addFilter(_not_an_echo)
    logging.getLogger("asyncio").addFilter(_not_an_echo)
    sys.unraisablehook = _skipping_closed_loop_callbacks(sys.unraisablehook)
    sys.excepthook = _skipping_closed_loop_callbacks(sys.excepthook)


_echoes_quiet = False


def _not_an_echo(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not ("_SignalingThread.run() raised an exception" in message
                or message.split("\n", 1)[0].endswith("exception was never retrieved"))


def _skipping_closed_loop_callbacks(hook):
    """`hook`, except for a callback from native code into a closed asyncio loop."""
    def filtered(*args):
        error, tb = (args[0].exc_value, args[0].exc_traceback) if len(args) == 1 else (args[1], args[2])
        if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and tb is not None
                and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"):
            return
        hook(*args)

    return filtered



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
