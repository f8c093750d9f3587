"""The CLI front door: help, gin handling, and one-line errors with exit code 2."""

import os
import subprocess
import sys

import pytest

from symtune import cli
from symtune.config import CONFIGS_DIR


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300
    )


def test_symtune_help_lists_commands():
    proc = run("symtune.cli", "--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout and "usage: symtune" in proc.stdout


def test_tart_help():
    proc = run("tart.cli", "--help")
    assert proc.returncode == 0
    assert "usage: tart" in proc.stdout and "reasoning head" in proc.stdout


def test_console_scripts_installed():
    import shutil

    for name in ("symtune", "tart"):
        path = shutil.which(name) or str(__import__("pathlib").Path(sys.executable).parent / name)
        proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        ([], "a command is required"),
        (["demo", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
        (["demo", "--gin_file=does/not/exist.gin"], "gin file 'does/not/exist.gin' not found"),
        (["demo", "--gin.nonexistent_thing.x=1"], "bad gin config"),
        (["demo", "--gin.demo.run_dir"], "has no value"),
    ],
)
def test_bad_invocation_is_one_line_exit_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_gin_file_resolves_under_configs_and_overrides_apply(tmp_path, monkeypatch, capsys):
    import gin

    from symtune.config import parse_gin, resolve_gin_file

    (tmp_path / "a.gin").write_text("demo.run_dir = 'from_file'\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_gin_file("a") == tmp_path / "a.gin"
    import symtune.demo  # noqa: F401  (registers the `demo` configurable)

    parse_gin(["a.gin"], ["demo.run_dir = 'from_override'"])
    assert gin.query_parameter("demo.run_dir") == "from_override"
    assert CONFIGS_DIR.name == "configs"


DEVICES_COMMAND = """
import jax

USES_GIN = True


def add_arguments(parser):
    pass


def run(args):
    print("devices", jax.device_count())
"""


@pytest.mark.parametrize("env, expected", [({}, 3), ({"SYMTUNE_CPU_DEVICES": "2"}, 2)])
def test_every_command_simulates_host_config_cpu_devices_and_the_launcher_env_wins(tmp_path, env, expected):
    (tmp_path / "devices_command.py").write_text(DEVICES_COMMAND)
    script = ("import sys; from symtune.cli import Command, run_cli; "
              "sys.exit(run_cli('x', 'x', [Command('devices', 'devices_command', '')], sys.argv[1:]))")
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SYMTUNE_CPU_DEVICES")}
    proc = subprocess.run([sys.executable, "-c", script, "devices", "--gin.HostConfig.cpu_devices=3"],
                          env={**clean, **env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"devices {expected}" in proc.stdout
