"""Runs one command as N local JAX processes with a coordinator on localhost: multi-host on one machine.

    python -m symtune.train.local_launch --processes=2 --devices=4 -- symtune train --gin_file=...

Each process gets SYMTUNE_COORDINATOR / SYMTUNE_NUM_PROCESSES / SYMTUNE_PROCESS_ID (which
`symtune.train.distributed.initialize` reads) and its own `--devices` simulated CPU devices
(SYMTUNE_CPU_DEVICES, which wins over HostConfig.cpu_devices, and XLA_FLAGS). Output lines are
prefixed with the process id, stdout's on stdout and stderr's on stderr. If one process fails, the
others are stopped; SIGTERM and Ctrl-C are passed on to all of them (so a preemption test behaves
like a pod's).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Sequence

from symtune.hostenv import ENV_CPU_DEVICES
from symtune.train.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, processes: int, port: int, devices: int,
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one local process: the job's coordinates and its simulated devices."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env.update({
        ENV_COORDINATOR: f"127.0.0.1:{port}",
        ENV_NUM_PROCESSES: str(processes),
        ENV_PROCESS_ID: str(process_id),
        ENV_CPU_DEVICES: str(devices),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
    })
    return env


def _relay(process_id: int, stream, out) -> None:
    for line in stream:
        out.write(f"[{process_id}] {line}")
        out.flush()


def launch(command: Sequence[str], processes: int, devices: int, port: int | None = None) -> int:
    """Runs `command` as `processes` processes; returns the first non-zero exit code, else 0."""
    port = port or free_port()
    procs = [
        subprocess.Popen(list(command), env=process_env(i, processes, port, devices),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(processes)
    ]
    # One relay per stream: a progress bar's partial line on stderr must not swallow a stdout line.
    relays = [threading.Thread(target=_relay, args=(i, source, sink), daemon=True)
              for i, p in enumerate(procs) for source, sink in ((p.stdout, sys.stdout), (p.stderr, sys.stderr))]
    for relay in relays:
        relay.start()

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = 0
        remaining = list(procs)
        while remaining:
            for p in list(remaining):
                try:
                    rc = p.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                remaining.remove(p)
                if rc != 0 and code == 0:
                    code = rc
                    for other in remaining:  # a lone survivor would wait on its peers forever
                        other.kill()
        for relay in relays:
            relay.join(timeout=5)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m symtune.train.local_launch",
        description="run a command as N local JAX processes with a coordinator on localhost")
    parser.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument("--devices", type=int, default=4, help="simulated CPU devices per process")
    parser.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.processes < 1 or args.devices < 1:
        parser.error("give --processes >= 1, --devices >= 1 and a command after --")
    return launch(command, args.processes, args.devices, args.port)


if __name__ == "__main__":
    sys.exit(main())
