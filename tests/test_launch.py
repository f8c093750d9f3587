"""Launch scripts: the exact commands their --dry-run prints, what those commands do on a worker,
and their usage errors."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from symtune.config import CONFIGS_DIR

LAUNCH = CONFIGS_DIR.parent / "launch"
REPO = "--repo=https://github.com/example/symtune.git"
COMMAND = ["symtune", "train", "--gin_file=runs/symtune_finetune", "--run_dir=gs://bucket/runs/st"]


def dry_run(script: str, *args: str, **kwargs) -> list[str]:
    proc = subprocess.run([str(LAUNCH / script), *args], capture_output=True, text=True, check=True, **kwargs)
    return proc.stdout.splitlines()


def remote_command(line: str) -> str:
    """The shell command a printed `gcloud ... ssh --command=...` line runs on each worker."""
    return shlex.split(line)[-1].removeprefix("--command=")


def test_tpu_pod_dry_run_installs_python_3_11_with_uv_then_the_pinned_packages():
    lines = dry_run("tpu_pod.sh", "--tpu=st-v5p-64", "--zone=us-east5-a", REPO, "--ref=v0.1", "--dry-run",
                    "--", *COMMAND)
    assert len(lines) == 2
    assert lines[0] == (
        "gcloud compute tpus tpu-vm ssh st-v5p-64 --zone=us-east5-a --worker=all '--command=set -e; "
        "if [ -d symtune/.git ]; then git -C symtune fetch -q origin v0.1 && git -C symtune checkout -q "
        "FETCH_HEAD; else git clone -q --branch v0.1 https://github.com/example/symtune.git symtune; fi; "
        "cd symtune; [ -x $HOME/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | "
        "env UV_UNMANAGED_INSTALL=$HOME/.local/bin sh; "
        ".venv/bin/python -c \"import sys; sys.exit(sys.version_info < (3, 11))\" 2>/dev/null || "
        "{ rm -rf .venv && $HOME/.local/bin/uv venv -q --seed --python 3.11 .venv; }; "
        ".venv/bin/pip install -q -c constraints.txt -e . \"jax[tpu]==0.10.2\"; "
        ".venv/bin/pip install -q --no-deps t5==0.9.4'"
    )


def test_tpu_pod_dry_run_starts_the_command_detached_with_a_log_per_worker():
    lines = dry_run("tpu_pod.sh", "--tpu=st-v5p-64", "--zone=us-east5-a", REPO, "--dry-run", "--", *COMMAND)
    assert shlex.split(lines[1])[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "st-v5p-64",
                                         "--zone=us-east5-a", "--worker=all"]
    remote = shlex.split(remote_command(lines[1]))
    start = remote.index("nohup")
    assert remote[start - 1] == "PATH=$HOME/symtune/.venv/bin:$PATH"
    assert remote[start + 1:start + 1 + len(COMMAND)] == COMMAND
    assert remote[start + 1 + len(COMMAND):start + 5 + len(COMMAND)] == [
        ">>$HOME/symtune-logs/$(hostname).log", "2>&1", "</dev/null", "&"]


def test_tpu_pod_dry_run_quotes_arguments_so_each_worker_sees_them_unchanged():
    command = ["symtune", "train", "--gin.TrainData.vocabulary='hf:/mnt/llama 3'", "--run_dir=gs://b/r"]
    lines = dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--project=p", "--data_dir=/mnt/my data",
                    "--skip_install", "--dry-run", "--", *command)
    assert len(lines) == 1
    local = shlex.split(lines[0])
    assert local[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=z", "--project=p", "--worker=all"]
    remote = shlex.split(remote_command(lines[0]))
    start = remote.index("nohup")
    assert remote[start - 1] == "SYMTUNE_DATA_DIR=/mnt/my data"
    assert remote[start + 1:start + 1 + len(command)] == command


def test_tpu_pod_run_outlives_its_shell_refuses_a_second_start_and_stops_with_a_checkpoint(tmp_path):
    """The printed worker commands, run by bash in a stand-in home directory."""
    home = tmp_path / "home"  # a link, as home directories often are
    (tmp_path / "disk" / "symtune").mkdir(parents=True)
    home.symlink_to(tmp_path / "disk")
    # A stand-in for training: reports SIGTERM the way the trainer checkpoints on it.
    program = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (print('checkpointed', "
               "flush=True), sys.exit(0))); print('training', flush=True); time.sleep(120)")
    start = remote_command(dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--skip_install", "--dry-run", "--",
                                   sys.executable, "-c", program)[0])
    stop = remote_command(dry_run("tpu_pod.sh", "--tpu=t", "--zone=z", "--dry-run", "--stop")[0])
    env = dict(os.environ, HOME=str(home))

    def on_worker(command):
        # timeout: a run that held the ssh session's output open would hang here
        return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True,
                              timeout=30)

    started = on_worker(start)
    assert started.returncode == 0, started.stderr
    host = started.stdout.split(":")[0]
    log, pid_file = home / "symtune-logs" / f"{host}.log", home / "symtune-logs" / f"{host}.pid"
    pid = int(pid_file.read_text())
    try:
        deadline = time.time() + 30
        while "training" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(pid, signal.SIGHUP)  # what a dropped ssh connection sends
        time.sleep(0.5)
        os.kill(pid, 0)  # still running
        again = on_worker(start)
        assert again.returncode == 1 and f"a run is already going (pid {pid})" in again.stderr
        stopped = on_worker(stop)
        assert stopped.stdout == f"{host}: sent SIGTERM to {pid}; it checkpoints and exits\n"
        deadline = time.time() + 30
        while "checkpointed" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        assert log.read_text() == "training\ncheckpointed\n"
    finally:
        for started_pid in {pid, int(pid_file.read_text())}:
            try:
                if os.readlink(f"/proc/{started_pid}/cwd") == os.path.realpath(home / "symtune"):
                    os.kill(started_pid, signal.SIGKILL)
            except OSError:  # gone already
                pass
    time.sleep(0.2)
    assert on_worker(stop).stdout == f"{host}: no run going\n"


def _copy_launcher(root):
    (root / "launch").mkdir(parents=True)
    shutil.copy(LAUNCH / "tpu_pod.sh", root / "launch" / "tpu_pod.sh")
    return root / "launch" / "tpu_pod.sh"


def test_tpu_pod_clones_the_checkouts_origin_and_without_one_asks_for_repo(tmp_path):
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path))
    args = ["--tpu=t", "--zone=z", "--dry-run", "--", *COMMAND]
    bare = subprocess.run([_copy_launcher(tmp_path / "bare"), *args], capture_output=True, text=True, env=env)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr == ("tpu_pod.sh: no repository to clone on the workers: pass --repo=URL "
                           "(this checkout has no origin remote)\n")

    checkout = tmp_path / "checkout"
    launcher = _copy_launcher(checkout)
    subprocess.run(["git", "init", "-q", checkout], check=True, env=env)
    subprocess.run(["git", "-C", checkout, "remote", "add", "origin", "https://example.com/me/symtune.git"],
                   check=True, env=env)
    lines = subprocess.run([launcher, *args], capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert "git clone -q --branch main https://example.com/me/symtune.git symtune" in remote_command(lines[0])


@pytest.fixture
def installed(tmp_path):
    """A directory holding a .venv with this interpreter and its symtune script, as make install leaves."""
    bin_dir = tmp_path / "install" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "symtune").symlink_to(shutil.which("symtune", path=os.path.dirname(sys.executable)))
    return tmp_path / "install"


def test_slurm_dry_run_submits_one_task_per_gpu_or_per_node(installed):
    env = dict(os.environ, SYMTUNE_REPO=str(installed))
    args = ["--", "train", "--gin_file=runs/symtune_finetune", "--run_dir=/shared/runs/st"]
    assert dry_run("slurm.sh", "--nodes=4", "--partition=h100", "--time=48:00:00", "--dry-run", *args, env=env) == [
        "sbatch --parsable --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 --time=48:00:00 --partition=h100 "
        f"{LAUNCH}/slurm_gpu.sbatch train --gin_file=runs/symtune_finetune --run_dir=/shared/runs/st"
    ]
    assert dry_run("slurm.sh", "--nodes=2", "--gpus_per_node=4", "--per=node", "--account=lab", "--dry-run",
                   *args, env=env) == [
        "sbatch --parsable --nodes=2 --ntasks-per-node=1 --gpus-per-node=4 --time=24:00:00 --account=lab "
        f"{LAUNCH}/slurm_gpu.sbatch train --gin_file=runs/symtune_finetune --run_dir=/shared/runs/st"
    ]


def test_slurm_without_an_install_says_where_it_looked_before_queueing(tmp_path):
    proc = subprocess.run([LAUNCH / "slurm.sh", "--nodes=1", "--dry-run", "--", "train"], capture_output=True,
                          text=True, env=dict(os.environ, SYMTUNE_REPO=str(tmp_path)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"slurm.sh: no .venv/bin/symtune in {tmp_path}: install there (make install "
                           "PYTHON=python3.11) or set SYMTUNE_REPO to the install\n")


@pytest.mark.parametrize("script, args, message", [
    ("tpu_pod.sh", ["--zone=z", "--", "symtune", "train"], "missing --tpu=NAME"),
    ("tpu_pod.sh", ["--tpu=t", "--", "symtune", "train"], "missing --zone=ZONE"),
    ("tpu_pod.sh", ["--tpu=t", "--zone=z", REPO], "missing the command after --"),
    ("tpu_pod.sh", ["--tpu=t", "--zone=z", "--stop", "--", "symtune"], "--stop takes no command"),
    ("tpu_pod.sh", ["--tpu=t", "--zone=z", "--bogus", "--", "symtune"], "unknown option --bogus"),
    ("slurm.sh", ["--", "train"], "missing --nodes=N"),
    ("slurm.sh", ["--nodes=1", "--per=rack", "--", "train"], "--per must be gpu (one process per GPU) or node"),
    ("slurm.sh", ["--nodes=two", "--", "train"], "--nodes must be a positive integer, got 'two'"),
    ("slurm.sh", ["--nodes=1"], "missing the symtune command after --"),
    ("slurm.sh", ["--nodes=1", "--", "symtune", "train"], "-- train, without 'symtune'"),
    ("slurm.sh", ["--nodes=1", "--bogus", "--", "train"], "unknown option --bogus"),
])
def test_bad_invocations_are_one_line_that_names_the_option_and_exit_2(script, args, message):
    proc = subprocess.run([str(LAUNCH / script), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_sbatch_script_runs_the_command_under_srun_with_a_log_per_task_and_a_preemption_signal():
    text = (LAUNCH / "slurm_gpu.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in text
    assert 'srun --kill-on-bad-exit=1 --output="$logs/task-%t.out" .venv/bin/symtune "$@"' in text
    assert 'logs="slurm-logs/$SLURM_JOB_ID"' in text
