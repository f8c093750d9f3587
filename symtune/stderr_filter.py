"""Forwards a process's stderr to the console without native libraries' INFO/WARNING lines.

Run as its own small process (`python -I -S stderr_filter.py`, stdin: the pipe that the CLI's
fd 2 writes to, stdout: the console), so that what a crashing process writes last (a fatal
`F...` log line, "terminate called after throwing ...") still reaches the console after that
process is gone: a forwarding thread would die with it. Imports nothing but the standard library.
"""

import os
import re
import signal
import sys

# A native library's log line (absl/glog format): severity, MMDD, time (before absl is initialised,
# "00:00:<epoch seconds>"), thread id, file:line].
_NATIVE_LOG = re.compile(rb"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.+-]+:\d+\] ")
_ABSL_PREINIT = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def forward_lines(read_end: int, console: int) -> None:
    """Copies `read_end` to `console` until end of file, dropping native INFO/WARNING lines."""
    pending = b""
    while chunk := os.read(read_end, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = [line + b"\n" for line in lines if not is_native_chatter(line)]
        # A fragment that cannot become a native log line (a progress bar, a prompt) goes out now.
        if pending and not may_be_native_chatter(pending):
            kept.append(pending)
            pending = b""
        if kept:
            os.write(console, b"".join(kept))
    if pending and not is_native_chatter(pending):
        os.write(console, pending)


def is_native_chatter(line: bytes) -> bool:
    return line.startswith(_ABSL_PREINIT) or bool(_NATIVE_LOG.match(line))


def may_be_native_chatter(fragment: bytes) -> bool:
    """Whether the start of a line could still turn out to be native chatter."""
    head = fragment[:len(_ABSL_PREINIT)]
    return _ABSL_PREINIT.startswith(head) or bool(re.match(rb"[IW](\d|$)", fragment))


if __name__ == "__main__":
    # Ended by end of file once every writer is gone, not by the signals that stop the writers.
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, signal.SIG_IGN)
    forward_lines(sys.stdin.fileno(), sys.stdout.fileno())
