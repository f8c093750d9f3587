"""Multi-process JAX start-up: TPU pods (JAX detects them), SLURM job steps, or an explicit coordinator.

Call `initialize()` first thing in a process, before any JAX computation. Afterwards every process
runs the same program: each feeds its share of the batch, and all of them save and restore
checkpoints together (see symtune.train.checkpoint).

Modes:
  auto      explicit settings if any are given (arguments or SYMTUNE_* variables), else a SLURM job
            step (srun), else a Cloud TPU VM (JAX reads the pod layout), else one process (no-op)
  none      one process; nothing to start
  tpu       let JAX detect the TPU pod (GCE metadata or GKE variables)
  slurm     read the SLURM job step's environment (launch with srun, one task per node or per GPU)
  explicit  coordinator address, process count and id from the arguments or from
            SYMTUNE_COORDINATOR, SYMTUNE_NUM_PROCESSES, SYMTUNE_PROCESS_ID
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import gin
import jax

from symtune.errors import UserError
from symtune.hostenv import restore_stderr

MODES = ("auto", "none", "tpu", "slurm", "explicit")
ENV_COORDINATOR = "SYMTUNE_COORDINATOR"
ENV_NUM_PROCESSES = "SYMTUNE_NUM_PROCESSES"
ENV_PROCESS_ID = "SYMTUNE_PROCESS_ID"
# JAX's own convention for overriding the port it derives for SLURM jobs.
ENV_COORDINATOR_PORT = "JAX_COORDINATOR_PORT"

log = logging.getLogger(__name__)

# A SLURM job step (inside srun) sets the step variables; the batch script itself does not, and a
# process started there must not wait for peers that were never launched.
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NODELIST")


@dataclass(frozen=True)
class Launch:
    """How this process joins the job; fields left None are for JAX's own detection to fill in."""

    source: str  # "single", "explicit", "slurm" or "tpu"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def multi_process(self) -> bool:
        return self.source != "single"


def resolve_launch(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> Launch:
    """Decides how to start from the arguments and the environment, without connecting to anything."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise UserError(f"unknown distributed mode {mode!r}; choose from {', '.join(MODES)}")
    ids = None if local_device_ids is None else tuple(int(i) for i in local_device_ids)
    explicit_given = any(v is not None for v in (coordinator_address, num_processes, process_id))
    explicit_env = any(env.get(k) for k in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID))

    if mode == "auto":
        if explicit_given or explicit_env:
            mode = "explicit"
        elif all(k in env for k in _SLURM_STEP_VARS):
            mode = "slurm"
        elif _on_cloud_tpu_vm(env):
            mode = "tpu"
        else:
            mode = "none"

    if mode == "none":
        if explicit_given or ids is not None:
            raise UserError("distributed mode 'none' takes no coordinator settings; use mode='explicit'")
        return Launch("single")
    if mode == "explicit":
        return _explicit_launch(coordinator_address, num_processes, process_id, ids, env)
    if mode == "slurm":
        if num_processes is not None or process_id is not None:
            raise UserError("under SLURM the process count and id come from srun; drop num_processes/process_id")
        return slurm_launch(env, coordinator_address, ids)
    # "tpu": JAX reads the pod layout itself; pass along whatever the user pinned.
    return Launch("tpu", coordinator_address, num_processes, process_id, ids)


def _explicit_launch(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    ids: tuple[int, ...] | None,
    env: Mapping[str, str],
) -> Launch:
    address = coordinator_address or env.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    missing = [
        f"{arg} (or ${var})"
        for arg, var, value in (
            ("coordinator_address", ENV_COORDINATOR, address),
            ("num_processes", ENV_NUM_PROCESSES, count),
            ("process_id", ENV_PROCESS_ID, index),
        )
        if value is None
    ]
    if missing:
        raise UserError(f"explicit distributed start needs {', '.join(missing)}; set all three on every process")
    if not re.fullmatch(r"\S+:\d+", address):
        raise UserError(f"coordinator address {address!r} must be HOST:PORT, e.g. 10.0.0.1:8476")
    if count < 1 or not 0 <= index < count:
        raise UserError(f"process_id must be in [0, num_processes); got process_id={index}, num_processes={count}")
    return Launch("explicit", address, count, index, ids)


def slurm_launch(
    env: Mapping[str, str],
    coordinator_address: str | None = None,
    local_device_ids: tuple[int, ...] | None = None,
) -> Launch:
    """The launch of one task of a SLURM job step: coordinator on the step's first node."""
    missing = [k for k in _SLURM_STEP_VARS if k not in env]
    if missing:
        raise UserError(
            f"SLURM step variables missing ({', '.join(missing)}): start each process with srun, "
            "not directly in the batch script"
        )
    count = _env_int(env, "SLURM_STEP_NUM_TASKS") or _env_int(env, "SLURM_NTASKS") or 1
    index = _env_int(env, "SLURM_PROCID")
    if count == 1:
        return Launch("single")
    if coordinator_address is None:
        # Same port rule as JAX's SLURM detector, so every task derives the same address.
        port = env.get(ENV_COORDINATOR_PORT) or str(int(env["SLURM_JOB_ID"]) % 2**12 + 65536 - 2**12)
        coordinator_address = f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}"
    if local_device_ids is None:
        local_device_ids = _slurm_local_devices(env, count)
    return Launch("slurm", coordinator_address, count, index, local_device_ids)


def _slurm_local_devices(env: Mapping[str, str], count: int) -> tuple[int, ...] | None:
    """One task per node sees all the node's devices; several tasks per node get one device each.

    JAX's own SLURM detector always pins a task to device SLURM_LOCALID, which leaves a
    one-task-per-node job using a single GPU per node. When SLURM already binds GPUs per task
    (--gpus-per-task), each task sees only its own, so nothing is pinned either.
    """
    nodes = _env_int(env, "SLURM_STEP_NUM_NODES") or _env_int(env, "SLURM_NNODES") or 1
    if count <= nodes or env.get("SLURM_GPUS_PER_TASK") or "SLURM_LOCALID" not in env:
        return None
    return (int(env["SLURM_LOCALID"]),)


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[003-010,012],cpu1' -> 'gpu003'."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    # Each bracket group contributes its first value, zero padding kept ('[003-010]' -> '003').
    host = re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", nodelist[:end].strip())
    if not host or "[" in host or "]" in host:
        raise UserError(f"cannot read the first host of SLURM node list {nodelist!r}; set coordinator_address")
    return host


def _on_cloud_tpu_vm(env: Mapping[str, str]) -> bool:
    """True on a Cloud TPU VM (libtpu installed and TPU chips attached) or a GKE TPU pod."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    # TPU v2-v4 chips appear as /dev/accel*, v5 and later through VFIO.
    return bool(env.get("TPU_WORKER_HOSTNAMES") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer") from None


@gin.configurable
def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 120,
) -> Launch:
    """Starts multi-process JAX as `mode` says (a no-op for one process); safe to call twice.

    A process that shows no sign of life for `heartbeat_timeout_s` (killed, its host lost) makes
    every other process exit with one line naming it (`watch_processes`), instead of waiting in a
    collective for it; JAX's own, later check (which aborts with a stack trace) is the backstop.
    """
    if initialization_timeout_s < 1 or heartbeat_timeout_s < 1:
        raise UserError(f"initialize: timeouts must be >= 1 s (got initialization_timeout_s="
                        f"{initialization_timeout_s}, heartbeat_timeout_s={heartbeat_timeout_s})")
    launch = resolve_launch(mode, coordinator_address, num_processes, process_id, local_device_ids)
    if jax.distributed.is_initialized():
        _check_same_job(launch)
        return launch
    if not launch.multi_process:
        return launch
    # CPU devices of different processes talk through gloo: JAX's default, put back if unset.
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX aborts the process if the coordinator cannot be reached, so say first what is attempted.
    log.info("joining JAX job (%s): coordinator %s, process %s of %s", launch.source,
             launch.coordinator_address or "auto", launch.process_id, launch.num_processes)
    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator_address,
            num_processes=launch.num_processes,
            process_id=launch.process_id,
            local_device_ids=list(launch.local_device_ids) if launch.local_device_ids is not None else None,
            initialization_timeout=initialization_timeout_s,
            heartbeat_timeout_seconds=2 * heartbeat_timeout_s + 30,
        )
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise UserError("call symtune.train.distributed.initialize() before any JAX computation") from None
        raise
    watch_processes(heartbeat_timeout_s)
    return launch


EXIT_LOST_PROCESS = 75  # EX_TEMPFAIL: run the launch again and it resumes from the last checkpoint
_ALIVE = "symtune/alive/"
_DONE = "done"
_watching = threading.Event()
_watch_timeout_s = 0.0


def _time_to_tell() -> float:
    """How long the watcher may take to tell that another process was lost."""
    return _watch_timeout_s * 1.25 + 1


def await_lost_process(error: BaseException) -> None:
    """After a collective or device failure in a multi-process run (how a lost process surfaces),
    gives the watcher the time to tell whether another process was lost (it then ends this one
    with its line); returns at once for other errors, or if none was lost."""
    if _watching.is_set() and isinstance(error, jax.errors.JaxRuntimeError):
        time.sleep(_time_to_tell())


_TerminateHandler = ctypes.CFUNCTYPE(None)
_terminate_handler = None  # once installed; kept alive for as long as the C++ runtime holds it


def _hold_native_aborts() -> None:
    """A C++ exception escaping a native thread ends the process through std::terminate before any
    Python runs: gloo's TCP transport (CPU collectives) throws one when a peer dies mid-message.
    This holds such a thread for the watcher's time to tell, so that a lost process ends this one
    with the watcher's line; otherwise the runtime's own handler then reports and aborts as before."""
    global _terminate_handler
    if _terminate_handler is not None:
        return
    try:
        set_terminate = ctypes.CDLL("libstdc++.so.6")._ZSt13set_terminatePFvvE  # std::set_terminate
    except (OSError, AttributeError):  # not the GNU C++ runtime: aborts stay immediate
        log.debug("std::set_terminate not found; native aborts are not held for the process watcher")
        return
    set_terminate.restype, set_terminate.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    previous = None

    def hold() -> None:
        if _watching.is_set():  # not once this process has finished its command
            time.sleep(_time_to_tell())
        if previous:
            _TerminateHandler(previous)()  # prints the exception and aborts
        os.abort()

    _terminate_handler = _TerminateHandler(hold)
    previous = set_terminate(ctypes.cast(_terminate_handler, ctypes.c_void_p))


def finished() -> None:
    """Tells the other processes' watchers that this one ended its command normally (so its
    silence from now on is not a loss); a no-op without `watch_processes`."""
    if not _watching.is_set():
        return
    from jax._src import distributed as jax_distributed

    _watching.clear()
    jax_distributed.global_state.client.key_value_set(f"{_ALIVE}{jax.process_index()}", _DONE,
                                                      allow_overwrite=True)


def watch_processes(timeout_s: float) -> threading.Thread:
    """Starts a thread that keeps this process's heartbeat in JAX's key-value store and watches
    the others'; when one's has not moved for `timeout_s` (or the coordinator, process 0, cannot be
    reached for as long) it prints one line naming it and ends this process with
    EXIT_LOST_PROCESS. Heartbeats are counters, compared by this host's clock, never across hosts."""
    from jax._src import distributed as jax_distributed  # the client JAX joined with; no public handle

    client, me, count = jax_distributed.global_state.client, jax.process_index(), jax.process_count()
    interval = max(timeout_s / 8, 0.2)

    def lost(what: str) -> None:
        print(f"symtune: error: lost {what}: no sign of life for {timeout_s:g} s (killed, or its host "
              f"down); run the launch again to resume from the last checkpoint", file=sys.stderr, flush=True)
        restore_stderr()
        os._exit(EXIT_LOST_PROCESS)

    def watch() -> None:
        beats, last_seen, unreachable_since = 0, {}, None
        while _watching.is_set():
            now = time.monotonic()
            try:
                client.key_value_set(f"{_ALIVE}{me}", str(beats), allow_overwrite=True)
                seen = dict(client.key_value_dir_get(_ALIVE))
                unreachable_since = None
            except Exception:  # the coordinator's store is gone with process 0
                unreachable_since = unreachable_since or now
                if me != 0 and now - unreachable_since > timeout_s:
                    lost(f"the coordinator, process 0 of {count}")
                seen = {}
            for other in range(count):
                value = seen.get(f"{_ALIVE}{other}")
                if other == me or value is None and other not in last_seen or value == _DONE:
                    continue
                if value is not None and last_seen.get(other, (None,))[0] != value:
                    last_seen[other] = (value, now)
                elif now - last_seen[other][1] > timeout_s:
                    lost(f"process {other} of {count}")
            beats += 1
            time.sleep(interval)

    global _watch_timeout_s
    _watching.set()
    _watch_timeout_s = timeout_s
    _hold_native_aborts()
    thread = threading.Thread(target=watch, daemon=True, name="process-watch")
    thread.start()
    return thread


def _check_same_job(launch: Launch) -> None:
    """A second initialize() must describe the job already joined."""
    for name, wanted, actual in (
        ("num_processes", launch.num_processes, jax.process_count()),
        ("process_id", launch.process_id, jax.process_index()),
    ):
        if wanted is not None and wanted != actual:
            raise UserError(
                f"JAX distributed is already running with {name}={actual}, not {wanted}; "
                "initialize once per process"
            )


def describe_topology() -> str:
    """One line for logs: this process's place in the job and the devices it sees."""
    local = jax.local_devices()
    return (
        f"process {jax.process_index()} of {jax.process_count()} on {socket.gethostname()}: "
        f"{len(local)} local of {jax.device_count()} {local[0].platform} devices "
        f"(local ids {','.join(str(d.id) for d in local)})"
    )
