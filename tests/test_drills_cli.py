"""Reliability drills through the real CLI, one subprocess per command as a user runs it.

Every bad input ends in exit code 2 and one line on stderr (no traceback, no start-up noise), and
leaves the directories it was pointed at as they were. A checkpoint save that fails at the
operating-system level (writes refused past a file-size limit, as a full disk refuses them) is one
line, keeps the previous checkpoint complete, and the next start resumes from it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL_RUN = ["--gin_file=runs/tiny_cpu", "--gin.TrainData.batch_size=8", "--gin.TrainData.seq_len=128",
             "--gin.TrainerConfig.log_every=1", "--gin.CheckpointConfig.async_save=False"]


def cli(program: str, *args: str, cwd: Path, limit_file_bytes: int | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """`symtune ARGS` or `tart ARGS` as a user runs it, from `cwd`; optionally with every file
    write beyond `limit_file_bytes` refused by the kernel (RLIMIT_FSIZE: EFBIG, as ENOSPC would)."""
    command = [sys.executable, "-m", f"{program}.cli", *args]
    if limit_file_bytes:  # bash's ulimit counts 1,024-byte blocks
        command = ["bash", "-c", f'ulimit -f {limit_file_bytes // 1024} && exec "$@"', "bash", *command]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SYMTUNE_VERBOSE")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


PROGRESS_BAR = re.compile(r"\d+/\d+ \[[^\]]*(s/step|step/s)")  # tqdm's, on stderr while training


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, program: str, expected: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and re.match(rf"{program}( \w+)?: error: ", lines[0]), proc.stderr[-3000:]
    assert expected in lines[0], lines[0]


def truncated_data_dir(data_dir: Path, to: Path) -> Path:
    """A copy of the data bundle whose SST-2 training file ends half-way through a line."""
    shutil.copytree(data_dir, to)
    path = to / "glue" / "sst2" / "train.jsonl"
    text = path.read_bytes()
    path.write_bytes(text[:len(text) // 2 + 7])
    return to


# (id, program, arguments; {tmp} is the test's scratch directory, {data} the data bundle), and what
# the one line must say.
BAD_INPUTS = [
    ("unknown command", "symtune", ["frobnicate"], "unknown command 'frobnicate'"),
    ("unknown flag", "symtune", ["train", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    ("missing gin file", "symtune", ["train", "--gin_file=runs/nope"], "gin file 'runs/nope' not found"),
    ("unknown configurable", "symtune", ["train", *SMALL_RUN, "--gin.Nonexistent.x=1"], "bad gin config"),
    ("batch size of the wrong type", "symtune", ["train", *SMALL_RUN, "--gin.TrainData.batch_size='eight'"],
     "gin binding TrainData.batch_size='eight': expected int, got str"),
    ("batch the mesh does not divide", "symtune", ["train", *SMALL_RUN, "--gin.TrainData.batch_size=7"],
     "batch_size=7 does not split over the mesh's 8 batch shards"),
    ("sequence length out of range", "symtune", ["train", *SMALL_RUN, "--gin.TrainData.seq_len=4"],
     "gin config TrainData (batch_size=8, seq_len=4, "),
    ("keep out of range", "symtune", ["train", *SMALL_RUN, "--gin.CheckpointConfig.keep=0"],
     "keep must be >= 1 or None"),
    ("device count out of range", "symtune", ["train", *SMALL_RUN, "--gin.HostConfig.cpu_devices=0"],
     "cpu_devices must be >= 1"),
    ("heartbeat out of range", "symtune", ["train", *SMALL_RUN, "--gin.initialize.heartbeat_timeout_s=0"],
     "timeouts must be >= 1 s"),
    ("unknown preset", "symtune", ["train", *SMALL_RUN, "--gin.model_config.preset='llama-9'"], "llama-9"),
    ("impossible mesh", "symtune", ["train", *SMALL_RUN, "--gin.MeshConfig.data=3"],
     "has 3 slots but there are 8 devices"),
    ("unknown sharding rules", "symtune", ["train", *SMALL_RUN, "--gin.MeshConfig.rules='zero3'"],
     "unknown sharding rules 'zero3'"),
    ("unknown task", "symtune", ["train", *SMALL_RUN, "--gin.TrainData.mixture_or_task='symbol_tuning_nope'"],
     "unknown tuning mixture or task 'symbol_tuning_nope'"),
    ("missing data directory", "symtune",
     ["train", *SMALL_RUN, "--gin.TrainData.mixture_or_task='symbol_tuning_sst2'",
      "--gin.DataConfig.data_dir='{tmp}/no_data'"], "no_data has no MANIFEST.json; write the directory with"),
    ("truncated dataset file", "symtune",
     ["train", *SMALL_RUN, "--gin.TrainData.mixture_or_task='symbol_tuning_sst2'",
      "--gin.DataConfig.data_dir='{tmp}/truncated'"], "train.jsonl"),
    ("eval of a missing run", "symtune", ["eval", "--checkpoint", "{tmp}/no_run"], "no_run"),
    ("eval of a directory that is no run", "symtune", ["eval", "--checkpoint", "{tmp}/scratch"], "scratch"),
    ("unknown eval setting", "symtune", ["eval", "--checkpoint", "{tmp}/scratch",
                                          "--gin.EvalConfig.settings=('bogus',)"],
     "unknown evaluation setting 'bogus'"),
    ("export of a missing checkpoint", "symtune", ["export", "--checkpoint", "{tmp}/no_run", "--out",
                                                   "{tmp}/export"], "no_run"),
    ("unknown topology", "symtune", ["plan", "--topology=v9-8"], "v9-8"),
    ("compare of missing reports", "symtune", ["compare", "{tmp}/no_eval", "{tmp}/no_eval2"], "no_eval"),
    ("inspect of an unknown task", "symtune", ["data", "inspect", "symbol_eval_nope_symbols"], "nope"),
    ("bad TART encoder", "tart", ["eval", "--encoder", "bogus:thing", "--run_dir", "{tmp}/tart"], "bogus"),
    ("missing TART head", "tart", ["eval", "--head", "{tmp}/no_head", "--run_dir", "{tmp}/tart"], "no_head"),
    ("missing TART data file", "tart", ["eval", "--data", "{tmp}/no_file.jsonl", "--run_dir", "{tmp}/tart"],
     "no_file.jsonl"),
    ("TART batch of the wrong type", "tart", ["train", "--gin_file=runs/tart_cpu",
                                             "--gin.TartRunConfig.batch_size='big'", "--run_dir", "{tmp}/tart"],
     "expected int, got str"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("drills")
    (root / "scratch").mkdir()
    (root / "scratch" / "notes.txt").write_text("not a run\n")
    truncated_data_dir(data_dir, root / "truncated")
    return root


# The default suite drives these through the CLI (~10 s each); the rest run with `-m slow`.
DEFAULT_SUITE = {"batch size of the wrong type", "batch the mesh does not divide", "keep out of range",
                 "impossible mesh", "missing data directory", "truncated dataset file",
                 "eval of a directory that is no run", "unknown topology", "missing TART head",
                 "missing TART data file"}


@pytest.mark.parametrize("program, args, expected", [
    pytest.param(*case[1:], id=case[0], marks=() if case[0] in DEFAULT_SUITE else pytest.mark.slow)
    for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(scratch, program, args, expected, data_dir):
    before = listing(scratch)
    args = [a.format(tmp=scratch, data=data_dir) for a in args]
    run_dir = scratch / "run"
    if program == "symtune" and args[0] == "train":
        args.append(f"--run_dir={run_dir}")
    proc = cli(program, *args, cwd=scratch)
    assert_one_line_exit_2(proc, program, expected.format(tmp=scratch))
    assert "Traceback" not in proc.stdout
    assert listing(scratch) == before and not run_dir.exists()


def test_a_save_the_filesystem_refuses_is_one_line_and_the_next_start_resumes_from_the_last_good_step(
        tmp_path, data_dir):
    run_dir = tmp_path / "run"
    common = [*SMALL_RUN, "--gin.CheckpointConfig.save_every_steps=2", "--gin.CheckpointConfig.keep=None",
              "--gin.TrainData.mixture_or_task='symbol_tuning_sst2'", f"--gin.DataConfig.data_dir='{data_dir}'",
              f"--run_dir={run_dir}"]
    first = cli("symtune", "train", *common, "--gin.TrainerConfig.steps=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    step_2 = run_dir / "checkpoints" / "2"
    saved = listing(step_2)
    # Orbax writes ~4.5 MB of array data in files of ~0.03-3 MB here (how it splits them varies
    # from run to run); every other file a run writes (configs, metadata, TensorBoard events)
    # stays under 32 KiB.
    limit = 128 * 1024
    data = [size for name, size in saved.items() if "/d/" in name]
    assert sum(data) > 16 * limit and max(data) > 4 * limit, data
    assert max(size for name, size in saved.items() if "/d/" not in name) < limit // 4
    full = cli("symtune", "train", *common, "--gin.TrainerConfig.steps=4", cwd=tmp_path,
               limit_file_bytes=limit)
    assert_one_line_exit_2(full, "symtune", "saving step 4 to ")
    line = full.stderr.strip()
    # tensorstore reports EFBIG as OUT_OF_RANGE; which of the refused writes surfaces first varies,
    # and some name only the status.
    assert "File too large (errno 27)" in line or "OUT_OF_RANGE" in line, line
    assert "the last complete checkpoint (step 2) is intact" in line, line
    assert "resuming from step 2" in full.stdout
    assert listing(step_2) == saved
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    resumed = cli("symtune", "train", *common, "--gin.TrainerConfig.steps=4", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4"]
