"""Distributed start-up: how the launch is read from SLURM, explicit settings and TPU VMs (faked
environments, nothing connects), and two real local processes saving one checkpoint together."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from symtune.errors import UserError
from symtune.train import distributed
from symtune.train.checkpoint import Checkpointer
from symtune.train.distributed import Launch, first_slurm_host, resolve_launch
from symtune.train.mesh import MeshConfig, make_mesh

WORKER = Path(__file__).with_name("multihost_worker.py")

SRUN_TWO_NODES = {  # srun -N2 --ntasks-per-node=1, seen by the task on the second node
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": "gpu[007-008]",
    "SLURM_STEP_NUM_NODES": "2",
}


@pytest.fixture(autouse=True)
def no_tpu(monkeypatch):
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda env: False)


def test_auto_without_any_cluster_is_one_process():
    assert resolve_launch("auto", env={}) == Launch("single")


def test_slurm_step_gives_coordinator_on_first_node():
    launch = resolve_launch("auto", env=SRUN_TWO_NODES)
    # JAX's SLURM port rule: 61440 + job id mod 4096 (123456 % 4096 = 576).
    assert launch == Launch("slurm", "gpu007:62016", 2, 1, None)


def test_slurm_port_and_address_can_be_overridden():
    env = {**SRUN_TWO_NODES, "JAX_COORDINATOR_PORT": "9999"}
    assert resolve_launch("slurm", env=env).coordinator_address == "gpu007:9999"
    assert resolve_launch("slurm", coordinator_address="10.1.1.1:7", env=env).coordinator_address == "10.1.1.1:7"


def test_slurm_tasks_sharing_a_node_get_one_device_each():
    env = {**SRUN_TWO_NODES, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "6",
           "SLURM_LOCALID": "2", "SLURM_STEP_NUM_NODES": "2"}
    assert resolve_launch("auto", env=env).local_device_ids == (2,)
    # --gpus-per-task already gives each task only its own GPUs.
    assert resolve_launch("auto", env={**env, "SLURM_GPUS_PER_TASK": "1"}).local_device_ids is None
    assert resolve_launch("auto", local_device_ids=[0, 1], env=env).local_device_ids == (0, 1)


def test_slurm_single_task_is_one_process():
    env = {**SRUN_TWO_NODES, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert resolve_launch("slurm", env=env) == Launch("single")


def test_slurm_batch_script_without_srun_is_not_a_job_step():
    batch = {k: v for k, v in SRUN_TWO_NODES.items() if not k.startswith("SLURM_STEP")}
    batch["SLURM_JOB_NODELIST"] = "gpu[007-008]"
    assert resolve_launch("auto", env=batch) == Launch("single")
    with pytest.raises(UserError, match="start each process with srun"):
        resolve_launch("slurm", env=batch)
    with pytest.raises(UserError, match="drop num_processes"):
        resolve_launch("slurm", num_processes=2, env=SRUN_TWO_NODES)


@pytest.mark.parametrize("nodelist, first", [
    ("node001", "node001"),
    ("node001,host2", "node001"),
    ("node[001-015],host2", "node001"),
    ("node[003,007-015],host2", "node003"),
    ("rack[1-2]-gpu[07-09]", "rack1-gpu07"),
])
def test_first_host_of_slurm_node_list(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_explicit_settings_come_from_arguments_or_environment():
    env = {"SYMTUNE_COORDINATOR": "10.0.0.1:8476", "SYMTUNE_NUM_PROCESSES": "4", "SYMTUNE_PROCESS_ID": "3"}
    assert resolve_launch("auto", env=env) == Launch("explicit", "10.0.0.1:8476", 4, 3)
    # Explicit settings win over SLURM in auto mode; arguments win over the environment.
    launch = resolve_launch("auto", process_id=0, env={**SRUN_TWO_NODES, **env})
    assert launch == Launch("explicit", "10.0.0.1:8476", 4, 0)


@pytest.mark.parametrize("kwargs, env, message", [
    ({"coordinator_address": "h:1"}, {}, r"num_processes \(or \$SYMTUNE_NUM_PROCESSES\), process_id"),
    ({}, {"SYMTUNE_NUM_PROCESSES": "two"}, "not an integer"),
    ({"coordinator_address": "host", "num_processes": 2, "process_id": 0}, {}, "HOST:PORT"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {}, "process_id must be in"),
])
def test_inconsistent_explicit_settings_are_user_errors(kwargs, env, message):
    with pytest.raises(UserError, match=message):
        resolve_launch("explicit", env=env, **kwargs)


def test_mode_mistakes_are_user_errors():
    with pytest.raises(UserError, match="unknown distributed mode"):
        resolve_launch("mpi", env={})
    with pytest.raises(UserError, match="takes no coordinator"):
        resolve_launch("none", coordinator_address="h:1", env={})


def test_tpu_vm_is_left_to_jax_detection(monkeypatch):
    monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda env: True)
    assert resolve_launch("auto", env={}) == Launch("tpu")


def test_single_process_initialize_is_a_no_op():
    assert distributed.initialize("none") == Launch("single")
    assert not jax.distributed.is_initialized()
    assert distributed.describe_topology().startswith("process 0 of 1 on ")


def test_initialize_after_jax_started_is_a_user_error():
    jax.devices()  # the test process has long started JAX; nothing connects
    with pytest.raises(UserError, match="before any JAX computation"):
        distributed.initialize("explicit", "127.0.0.1:1", 2, 1)
    assert not jax.distributed.is_initialized()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(worker: Path, run_dir: Path) -> list[tuple[dict, str]]:
    """Runs `worker RUN_DIR` as processes 0 and 1 of one job: (its JSON line, its stdout) each."""
    port = free_port()
    procs = []
    for process_id in range(2):
        env = {
            **os.environ,
            "SYMTUNE_COORDINATOR": f"127.0.0.1:{port}",
            "SYMTUNE_NUM_PROCESSES": "2",
            "SYMTUNE_PROCESS_ID": str(process_id),
        }
        procs.append(subprocess.Popen(
            [sys.executable, str(worker), str(run_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        ))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"worker failed:\n{err[-3000:]}"
            results.append((json.loads([line for line in out.splitlines() if line.startswith("{")][-1]), out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.multiprocess
def test_two_processes_save_one_checkpoint_that_one_process_restores(tmp_path):
    from multihost_worker import global_values, weights

    results = [result for result, _ in run_two_workers(WORKER, tmp_path)]
    w = weights()
    for result in results:
        assert result["launch"] == "explicit" and result["devices"] == 8
        np.testing.assert_allclose(result["total"], (global_values() @ w).sum(), rtol=1e-6)
    # SIGTERM reached process 1 only, yet both saved at the same agreed step.
    saved_at = {r["saved_at"] for r in results}
    assert len(saved_at) == 1 and None not in saved_at, results

    step = saved_at.pop()
    mesh = make_mesh(MeshConfig(data=8, tensor=1))
    abstract = {
        "step": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P())),
        "params": {"w": jax.ShapeDtypeStruct(w.shape, np.float32, sharding=NamedSharding(mesh, P(None, "tensor")))},
        "x": jax.ShapeDtypeStruct(global_values().shape, np.float32, sharding=NamedSharding(mesh, P("data"))),
    }
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == step
        state, data = ckpt.restore(None, abstract)
    assert int(state["step"]) == step and data == {"start_step": step, "seed": 7}
    np.testing.assert_array_equal(np.asarray(state["x"]), global_values())
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), w)
    assert state["x"].sharding == abstract["x"].sharding


@pytest.mark.multiprocess
def test_two_processes_agree_on_a_step_or_export_that_only_one_of_them_reads_as_damaged(tmp_path):
    from multihost_restore_worker import abstract_state
    from multihost_worker import global_values, weights

    from symtune.train.checkpoint import CheckpointConfig, export_params

    mesh = make_mesh(MeshConfig(data=8, tensor=1))
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1)) as ckpt:
        for step in (1, 2):
            values = {"step": np.int32(step), "params": {"w": weights() + step}, "x": global_values() * step}
            state = jax.tree.map(lambda v, a: jax.device_put(v, a.sharding), values, abstract_state(mesh))
            ckpt.save(step, state, {"start_step": step})
    export_params(state["params"], tmp_path / "export")
    results = run_two_workers(WORKER.with_name("multihost_restore_worker.py"), tmp_path)
    for result, _ in results:  # process 1 alone read step 2 as damaged; both went back to step 1
        assert result["step"] == 1 and result["data"] == {"start_step": 1} and result["complete"] == [1], result
        assert result["total"] == global_values().sum() + (weights() + 1).sum()
    export = tmp_path / "export"
    assert [r["refused"] for r, _ in results] == [
        f"checkpoint {export} is corrupt: another process could not read it",
        f"checkpoint {export} is corrupt: this process's shards do not decode"]
    assert "checkpoint step 2 is corrupt (another process could not read it); set aside as" in results[0][1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2.corrupt"]


ROWS_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from symtune.train import distributed
from symtune.train.mesh import MeshConfig, batch_sharding, make_mesh, process_batch_rows
distributed.initialize()
mesh = make_mesh(MeshConfig(data=2, tensor=4))  # a tensor group spans two processes of 2 devices
rows = process_batch_rows(mesh, 2)
local = (np.asarray(rows, np.float32)[:, None] + 1) * np.ones((1, 3), np.float32)  # row r holds r + 1
x = jax.make_array_from_process_local_data(batch_sharding(mesh, 2), local, (2, 3))
weighted = jax.jit(lambda a: (a * jnp.arange(1.0, 3.0)[:, None]).sum(), out_shardings=NamedSharding(mesh, P()))
out = {"rows": rows, "total": float(weighted(x))}
open(f"{sys.argv[1]}/{jax.process_index()}.json", "w").write(json.dumps(out))
"""


@pytest.mark.multiprocess
def test_more_processes_than_batch_rows_each_build_the_rows_their_devices_hold(tmp_path):
    from symtune.train.local_launch import launch

    assert launch([sys.executable, "-c", ROWS_SCRIPT, str(tmp_path)], processes=4, devices=2) == 0
    seen = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(4)]
    # Processes 0-1 share batch shard 0 (row 0), 2-3 shard 1 (row 1); the global batch is whole.
    assert [s["rows"] for s in seen] == [[0], [0], [1], [1]]
    assert all(s["total"] == 1 * 1 * 3 + 2 * 2 * 3 for s in seen)


def test_a_batch_the_mesh_batch_axes_do_not_divide_names_the_numbers_and_the_fix():
    from symtune.errors import UserError
    from symtune.train.mesh import process_batch_rows

    with pytest.raises(UserError, match=r"batch_size=7 does not split over the mesh's 8 batch shards "
                                        r"\(replica=1 x data=8 x fsdp=1\); use a multiple of 8 \(e\.g\. 8\)"):
        process_batch_rows(make_mesh(MeshConfig(data=8)), 7)
    assert process_batch_rows(make_mesh(MeshConfig(data=8)), 16) == list(range(16))
    assert process_batch_rows(make_mesh(MeshConfig(data=1, tensor=8)), 4) == [0, 1, 2, 3]


# std::terminate from a native thread, as gloo's transport thread ends when a peer dies mid-message.
_TERMINATE_IN_A_NATIVE_THREAD = """
import ctypes, os, sys, threading, time
from symtune.train import distributed
distributed._watch_timeout_s = 1.0
distributed._watching.set()  # as watch_processes leaves it
distributed._hold_native_aborts()
if sys.argv[1] == "lost":  # the watcher's part, as when it finds a process gone
    threading.Timer(0.5, lambda: (print("lost process 1 of 2", file=sys.stderr, flush=True), os._exit(75))).start()
if sys.argv[1] == "finished":  # as distributed.finished() leaves it
    distributed._watching.clear()
print(time.monotonic(), flush=True)  # the test measures from here (one clock for the machine)
threading.Thread(target=ctypes.CDLL("libstdc++.so.6")._ZSt9terminatev).start()
time.sleep(30)
"""


@pytest.mark.parametrize("watcher", ["lost", "nothing", "finished"])
def test_a_native_abort_waits_for_the_watcher_to_name_a_lost_process(watcher):
    import time

    proc = subprocess.run([sys.executable, "-c", _TERMINATE_IN_A_NATIVE_THREAD, watcher],
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - float(proc.stdout.split()[0])
    if watcher == "lost":
        assert proc.returncode == 75 and proc.stderr.splitlines()[-1] == "lost process 1 of 2", proc.stderr
        return
    # Then the C++ runtime's own report: after the watcher's time to tell (2.25 s) while it
    # watches, at once after the command has finished.
    assert proc.returncode == -6 and "terminate called without an active exception" in proc.stderr
    assert took > 2.25 if watcher == "nothing" else took < 2.25, took


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_process_ends_the_others_with_one_line_and_the_relaunch_ends_bit_identical(tmp_path, data_dir,
                                                                                           monkeypatch):
    import threading
    import time

    from symtune.train.distributed import EXIT_LOST_PROCESS
    from symtune.train.local_launch import launch
    from test_train_run import SMALL, cli, trained_params

    args = [f"--gin.{b}" for b in SMALL] + ["--gin.TrainerConfig.steps=30", "--gin.CheckpointConfig.save_every_steps=10",
                                            "--gin.initialize.heartbeat_timeout_s=10"]
    monkeypatch.setenv("SYMTUNE_DATA_DIR", str(data_dir))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    assert launch(cli(*args, f"--run_dir={tmp_path / 'whole'}"), processes=2, devices=4) == 0

    port, run_dir, output = free_port(), tmp_path / "killed", []
    procs = [subprocess.Popen(cli(*args, f"--run_dir={run_dir}"), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**env, "SYMTUNE_COORDINATOR": f"127.0.0.1:{port}",
                                                           "SYMTUNE_NUM_PROCESSES": "2", "SYMTUNE_PROCESS_ID": str(i),
                                                           "SYMTUNE_CPU_DEVICES": "4"})
             for i in range(2)]
    reader = threading.Thread(target=lambda: output.extend(procs[0].stdout), daemon=True)
    reader.start()
    try:
        while not any(line.startswith("step 15") for line in output):  # past the checkpoint at step 10
            assert procs[0].poll() is None, "process 0 ended before step 15"
            time.sleep(0.2)
        procs[1].kill()
        killed_at = time.monotonic()
        code = procs[0].wait(timeout=120)
        waited = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    err = procs[0].stderr.read()
    assert code == EXIT_LOST_PROCESS and waited < 60, (code, waited, err[-3000:])
    assert "symtune: error: lost process 1 of 2: no sign of life for 10 s" in err
    assert "Traceback" not in err and "Check failure" not in err

    assert launch(cli(*args, f"--run_dir={run_dir}"), processes=2, devices=4) == 0  # resumes
    expected = trained_params(tmp_path / "whole")
    for name, value in trained_params(run_dir).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
