"""Process settings made before JAX starts: where JAX computes, and glibc keeping freed memory."""

import os
import subprocess
import sys

import pytest

from symtune import cli, hostenv

REUSE = """
import ctypes, resource, sys
from symtune.hostenv import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
def touch(n):  # allocate, write every page, free: what an XLA step does with its temporaries
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch(256 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch(256 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _reuse(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", REUSE, mode], env={**clean, **env}, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_retained_memory_is_reused_without_page_faults():
    applied, retained_faults = _reuse("retain")
    _, default_faults = _reuse("default")
    # By default glibc maps a 256 MB block fresh and unmaps it on free: the second pass faults
    # every page in again (65,536 with 4 KB pages).
    assert applied and retained_faults < 100 and default_faults > 10 * max(retained_faults, 1)


def test_a_malloc_environment_set_by_the_user_is_left_alone():
    applied, faults = _reuse("retain", MALLOC_ARENA_MAX="2")
    assert not applied and faults > 100


@pytest.mark.parametrize("platforms, cpu_only", [("cpu", True), ("tpu", False), ("cpu,cuda", False), ("CPU", True)])
def test_runs_on_cpu_only_follows_jax_platforms(monkeypatch, platforms, cpu_only):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert hostenv.runs_on_cpu_only() is cpu_only


@pytest.mark.parametrize("platforms, applied", [("cpu", True), ("tpu", False)])
def test_the_cli_retains_freed_memory_only_for_cpu_runs(monkeypatch, platforms, applied):
    calls = []
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(hostenv, "retain_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == ([1] if applied else [])
