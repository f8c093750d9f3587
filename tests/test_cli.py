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


@pytest.mark.parametrize("argv, expected", [
    (["symtune.cli", "--help"], []),
    (["tart.cli", "eval", "--help"], []),
    (["symtune.cli", "train", "--gin_file=runs/tiny_cpu", "--gin.nonexistent_thing.x=1"],
     ["symtune: error: bad gin config: No configurable matching 'nonexistent_thing'."]),
])
def test_commands_start_quietly_printing_only_their_own_lines(argv, expected):
    proc = run(*argv)
    assert proc.stderr.splitlines() == expected
    assert proc.returncode == (2 if expected else 0) and (expected or proc.stdout.strip())  # help on stdout


def test_symtune_verbose_shows_the_native_libraries_start_up_lines():
    proc = subprocess.run([sys.executable, "-m", "symtune.cli", "train", "--gin_file=runs/tiny_cpu",
                           "--gin.nonexistent_thing.x=1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SYMTUNE_VERBOSE": "1"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("symtune: error: bad gin config")
    assert any(line.startswith("I0000 ") for line in lines), proc.stderr  # TensorFlow's start-up notices


def test_the_filter_drops_native_info_and_warnings_and_passes_everything_else(tmp_path):
    import threading

    from symtune.stderr_filter import forward_lines

    read_end, write_end = os.pipe()
    out = open(tmp_path / "console", "wb")
    forwarder = threading.Thread(target=forward_lines, args=(read_end, out.fileno()))
    forwarder.start()
    for chunk in [b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
                  b"I0000 00:00:1796249343.048882    5077 cudart_stub.cc:31] Could not find cuda drivers\n",
                  b"W1202 21:05:15.715953    3387 hlo_rematerialization.cc:3231] Can't reduce",
                  b" memory use\nE0000 00:00:1796245219.110685    2393 common_lib.cc:554] INVALID_ARGUMENT\n",
                  b"Traceback (most recent call last):\n", b"step 10/100\r"]:
        os.write(write_end, chunk)
    os.close(write_end)
    forwarder.join(timeout=10)
    out.close()
    assert (tmp_path / "console").read_bytes() == (
        b"E0000 00:00:1796245219.110685    2393 common_lib.cc:554] INVALID_ARGUMENT\n"
        b"Traceback (most recent call last):\nstep 10/100\r")


def test_the_last_lines_of_a_process_that_aborts_reach_the_console():
    # A native fatal error writes its message to fd 2 and aborts at once: the filter must outlive
    # the process to forward it (a thread of the dying process would lose it).
    code = ("import os, sys; from symtune.hostenv import hide_native_log_lines; hide_native_log_lines(); "
            "os.write(2, b'I0000 00:00:1796249343.048882 5077 cudart_stub.cc:31] chatter\\n'); "
            "os.write(2, b'F0000 00:00:1796249343.048882 5077 pair.cc:459] fatal: peer gone\\n'); "
            "os.write(2, b'terminate called after throwing an instance of gloo::EnforceNotMet\\n'); os.abort()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "SYMTUNE_VERBOSE"})
    assert proc.returncode == -6
    assert proc.stderr == (b"F0000 00:00:1796249343.048882 5077 pair.cc:459] fatal: peer gone\n"
                           b"terminate called after throwing an instance of gloo::EnforceNotMet\n")


@pytest.mark.parametrize("binding, message", [
    ("TrainData.batch_size='eight'", "gin binding TrainData.batch_size='eight': expected int, got str"),
    ("TrainData.batch_size=8.5", "gin binding TrainData.batch_size=8.5: expected int, got float"),
    ("OptimizerConfig.learning_rate='fast'", "OptimizerConfig.learning_rate='fast': expected float, got str"),
    ("MeshConfig.rules=3", "gin binding MeshConfig.rules=3: expected str, got int"),
    ("TrainData.pack=1", "gin binding TrainData.pack=1: expected bool, got int"),
    ("HostConfig.cpu_devices='8'", "HostConfig.cpu_devices='8': expected int or None, got str"),
])
def test_a_gin_value_of_the_wrong_type_is_one_line_naming_the_binding(binding, message, capsys):
    import gin

    try:
        code = cli.main(["train", "--gin_file=runs/tiny_cpu", f"--gin.{binding}"])
    finally:
        gin.clear_config()
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("symtune: error: ")
    assert message in err


def test_gin_values_of_the_annotated_types_pass_including_ints_for_floats_and_references():
    import gin

    from symtune.config import parse_gin

    try:
        parse_gin(["runs/tiny_cpu"], ["OptimizerConfig.learning_rate=1", "HostConfig.cpu_devices=None",
                                      "TrainData.batch_size=%BATCH", "BATCH=8"])
        assert gin.query_parameter("OptimizerConfig.learning_rate") == 1
    finally:
        gin.clear_config()
