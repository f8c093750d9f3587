"""`symtune train` on the real tuning mixture: learning, sharding equivalence, resume, multi-host."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from symtune.config import parse_gin
from symtune.data.pipeline import train_batches
from symtune.data.sources import DataConfig
from symtune.errors import UserError
from symtune.models.decoder import Decoder
from symtune.models.hf import export_hf
from symtune.models.presets import get_preset
from symtune.train.checkpoint import restore_params
from symtune.train.lm_objective import lm_loss
from symtune.train.mesh import MeshConfig, logical_rules, make_mesh
from symtune.train.optim import OptimizerConfig
from symtune.train.run import RunConfig, train
from symtune.train.rundir import latest_checkpoint, read_model_spec
from symtune.train.trainer import Trainer, TrainerConfig

SMALL = [
    "TrainData.batch_size=8", "TrainData.seq_len=128", "TrainerConfig.log_every=5",
    "CheckpointConfig.async_save=False",
]


@pytest.fixture
def gin_clean():
    yield
    gin.clear_config()


def assert_equal_up_to_reduction_order(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Float32 sums taken in another order (another process count) agree norm-wise, not elementwise.

    Reordering a reduction perturbs each result by a few ulps of the sum of magnitudes, so a tensor
    stays close in norm; an element whose gradient nearly cancels can move far more in relative
    terms (Adam normalises it), so only a small share of elements may miss an elementwise rtol.
    """
    diff = np.abs(actual.astype(np.float64) - expected)
    assert np.linalg.norm(diff) <= 1e-5 * np.linalg.norm(expected), f"{name}: norm-wise error too large"
    outside = diff > 1e-5 * np.abs(expected) + 1e-7
    assert outside.mean() <= 1e-4, f"{name}: {outside.sum()} of {outside.size} elements differ"


def trained_params(run_dir) -> dict[str, np.ndarray]:
    """The params of a run's newest checkpoint as numpy, by path."""
    config = read_model_spec(run_dir).config
    device = NamedSharding(make_mesh(MeshConfig(data=8)), P())
    model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params = restore_params(latest_checkpoint(run_dir), abstract)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def test_tiny_model_learns_the_real_mixture_and_writes_its_run_dir(tmp_path, data_dir, gin_clean, capsys):
    parse_gin(["runs/tiny_cpu"], SMALL + ["TrainerConfig.steps=20", "OptimizerConfig.warmup_steps=2",
                                          f"DataConfig.data_dir='{data_dir}'"])
    summary = train(RunConfig(run_dir=str(tmp_path)))
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0] - 1.0, losses
    assert summary["mesh"] == {"replica": 1, "data": 8, "fsdp": 1, "tensor": 1}
    assert summary["last_step"] == 20 and summary["parameters"] > 0
    assert json.loads((tmp_path / "run.json").read_text())["last_step"] == 20
    assert "TrainData.seq_len = 128" in (tmp_path / "config.gin").read_text()
    config, vocabulary, prefix_lm = read_model_spec(tmp_path)
    assert vocabulary == "default" and config.vocab_size == 4096 and config.num_layers == 2 and not prefix_lm
    assert latest_checkpoint(tmp_path).name == "20"
    out = capsys.readouterr().out
    assert "mesh: replica=1 x data=8" in out and "per-device memory (XLA)" in out


def test_rerun_of_a_finished_run_resumes_and_does_nothing_more(tmp_path, data_dir, gin_clean, capsys):
    parse_gin(["runs/tiny_cpu"], SMALL + ["TrainerConfig.steps=4", f"DataConfig.data_dir='{data_dir}'"])
    train(RunConfig(run_dir=str(tmp_path)))
    first = trained_params(tmp_path)
    summary = train(RunConfig(run_dir=str(tmp_path)))
    assert "resuming from step 4" in capsys.readouterr().out and summary["last_step"] == 4
    for name, value in trained_params(tmp_path).items():
        np.testing.assert_array_equal(value, first[name])


def test_warm_start_from_a_hugging_face_directory_begins_at_its_params(tmp_path, data_dir, gin_clean, capsys):
    config = get_preset("test-tiny").replace(vocab_size=4096)
    model = Decoder(config, rngs=nnx.Rngs(7))
    export_hf(config, model, tmp_path / "hf")
    parse_gin(["runs/tiny_cpu"], SMALL + ["TrainerConfig.steps=1", "OptimizerConfig.learning_rate=1e-12",
                                          f"DataConfig.data_dir='{data_dir}'"])
    train(RunConfig(run_dir=str(tmp_path / "run"), warm_start=str(tmp_path / "hf")))
    assert f"warm start from {tmp_path / 'hf'}" in capsys.readouterr().out
    expected = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
                jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}
    got = trained_params(tmp_path / "run")
    assert got.keys() == expected.keys()
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], atol=1e-9, err_msg=name)


@pytest.mark.parametrize("damage, message", [
    ("drop", r"checkpoint has no tensor model\.layers\.1\.mlp\.up_proj\.weight"),
    ("reshape", r"model\.safetensors: tensor model\.layers\.1\.mlp\.up_proj\.weight has shape \(64, 128\), "
                r"config\.json implies \(128, 64\)"),
])
def test_a_warm_start_checkpoint_missing_or_misshaping_a_tensor_stops_before_writing_anything(
        tmp_path, data_dir, gin_clean, damage, message):
    from symtune.models.safetensors_io import read_safetensors, write_safetensors

    config = get_preset("test-tiny").replace(vocab_size=4096)
    hf_dir = export_hf(config, Decoder(config, rngs=nnx.Rngs(7)), tmp_path / "hf")
    tensors = dict(read_safetensors(hf_dir / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    if damage == "drop":
        del tensors[name]
    else:
        tensors[name] = np.ascontiguousarray(tensors[name].T)
    write_safetensors(hf_dir / "model.safetensors", {k: np.array(v) for k, v in tensors.items()})
    parse_gin(["runs/tiny_cpu"], SMALL + ["TrainerConfig.steps=1", f"DataConfig.data_dir='{data_dir}'"])
    with pytest.raises(UserError, match=message) as error:
        train(RunConfig(run_dir=str(tmp_path / "run"), warm_start=str(hf_dir)))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_loss_curve_is_the_same_under_dp_fsdp_and_fsdp_tp_on_the_mixture(data_dir):
    batches = train_batches("symbol_tuning", "default", batch_size=8, seq_len=128, skip_missing=True,
                            config=DataConfig(data_dir=str(data_dir)))
    steps = [batches.batch(i) for i in range(5)]
    model_config = get_preset("test-tiny").replace(vocab_size=4096)
    curves = {}
    for name, mesh_config in {
        "dp8": MeshConfig(rules="dp"),
        "fsdp8": MeshConfig(data=1, fsdp=8, rules="fsdp"),
        "fsdp4_tp2": MeshConfig(data=1, fsdp=4, tensor=2, rules="fsdp+tp"),
    }.items():
        trainer = Trainer(
            lambda rngs: Decoder(model_config, rngs=rngs), functools.partial(lm_loss),
            mesh=make_mesh(mesh_config), rules=logical_rules(mesh_config.rules),
            config=TrainerConfig(steps=5), optimizer=OptimizerConfig(learning_rate=3e-3),
        )
        state, curve = trainer.init_state(), []
        for batch in steps:
            state, metrics = trainer.step(state, trainer.global_batch(batch))
            curve.append(float(metrics["loss"]))
        curves[name] = curve
    assert curves["dp8"][-1] < curves["dp8"][0]
    for name, curve in curves.items():
        np.testing.assert_allclose(curve, curves["dp8"], rtol=1e-4, err_msg=name)


def test_training_without_a_model_or_with_an_overlong_sequence_is_a_user_error(tmp_path, data_dir, gin_clean):
    parse_gin([], [f"DataConfig.data_dir='{data_dir}'", "TrainData.skip_missing=True"])
    with pytest.raises(UserError, match="no model chosen"):
        train(RunConfig(run_dir=str(tmp_path)))
    parse_gin(["runs/tiny_cpu"], [f"DataConfig.data_dir='{data_dir}'", "TrainData.seq_len=1024"])
    with pytest.raises(UserError, match="exceeds the model's max_positions=512"):
        train(RunConfig(run_dir=str(tmp_path)))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "symtune.cli", "train", "--gin_file=runs/tiny_cpu", *args]


def subprocess_env(data_dir, devices: int, **extra: str) -> dict[str, str]:
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return {**os.environ, "SYMTUNE_DATA_DIR": str(data_dir), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}", **extra}


def test_run_killed_with_sigkill_resumes_to_bit_identical_params(tmp_path, data_dir, repo_root):
    args = [f"--gin.{b}" for b in SMALL] + [
        "--gin.TrainerConfig.steps=60", "--gin.CheckpointConfig.save_every_steps=10",
        "--gin.CheckpointConfig.keep=None",
    ]
    env = subprocess_env(data_dir, 8)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli(*args, f"--run_dir={whole}"), env=env, cwd=repo_root, check=True, capture_output=True)
    victim = subprocess.Popen(cli(*args, f"--run_dir={killed}"), env=env, cwd=repo_root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if any((d / "commit_success.txt").exists() for d in (killed / "checkpoints").glob("*")):
            break
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "run.json").exists(), "the run finished before it could be killed"
    subprocess.run(cli(*args, f"--run_dir={killed}"), env=env, cwd=repo_root, check=True, capture_output=True)
    assert latest_checkpoint(killed).name == latest_checkpoint(whole).name == "60"
    expected = trained_params(whole)
    for name, value in trained_params(killed).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def train_one_and_two_processes(tmp_path, data_dir, repo_root, args: list[str]):
    """Trains with `args` in one process x 8 devices and in two local processes x 4 devices;
    checks they agree (losses, parameters up to reduction order) and returns both run dirs."""
    env = subprocess_env(data_dir, 8)
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run(cli(*args, f"--run_dir={single}"), env=env, cwd=repo_root, check=True, capture_output=True)
    launcher = [str(repo_root / "launch" / "local.sh"), "--processes=2", "--devices=4", "--"]
    done = subprocess.run(launcher + cli(*args, f"--run_dir={multi}"), env={**env, "PYTHON": sys.executable},
                          cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[0] training done at step" in done.stdout and "[1] " in done.stdout
    one, two = (json.loads((d / "run.json").read_text()) for d in (single, multi))
    assert two["processes"] == 2 and two["devices"] == 8 and one["processes"] == 1
    np.testing.assert_allclose([h["loss"] for h in two["history"]], [h["loss"] for h in one["history"]],
                               rtol=1e-5)
    expected = trained_params(single)
    for name, value in trained_params(multi).items():
        assert_equal_up_to_reduction_order(value, expected[name], name)
    return single, multi


@pytest.mark.multiprocess
def test_two_local_processes_train_like_one_and_one_process_resumes_their_run(tmp_path, data_dir, repo_root):
    args = [f"--gin.{b}" for b in SMALL] + ["--gin.TrainerConfig.steps=6"]
    _, multi = train_one_and_two_processes(tmp_path, data_dir, repo_root, args)
    env = subprocess_env(data_dir, 8)
    more = [a for a in args if "steps" not in a] + ["--gin.TrainerConfig.steps=8"]
    resumed = subprocess.run(cli(*more, f"--run_dir={multi}"), env=env, cwd=repo_root, capture_output=True,
                             text=True, check=True)
    assert "resuming from step 6" in resumed.stdout
    assert json.loads((multi / "run.json").read_text())["last_step"] == 8


@pytest.mark.multiprocess
@pytest.mark.parametrize("axis, rules", [("tensor", "tp"), ("fsdp", "fsdp")])
def test_two_local_processes_with_a_model_axis_across_them_train_like_one(tmp_path, data_dir, repo_root, axis,
                                                                          rules):
    # An 8-way axis over both processes' devices. Under tensor=8 there is one batch shard, which
    # both processes hold: each must build all 8 rows, identically.
    mesh = ["MeshConfig.data=1", f"MeshConfig.{axis}=8", f"MeshConfig.rules='{rules}'"]
    heads = "model_config.overrides={'num_heads': 8, 'num_kv_heads': 8, 'head_dim': 8}"  # 8 tensor shards
    args = [f"--gin.{b}" for b in [*SMALL, *mesh, heads]] + ["--gin.TrainerConfig.steps=3"]
    _, multi = train_one_and_two_processes(tmp_path, data_dir, repo_root, args)
    assert json.loads((multi / "run.json").read_text())["mesh"][axis] == 8


def test_local_launcher_stops_the_others_when_one_process_fails():
    from symtune.train.local_launch import launch

    code = launch([sys.executable, "-c", "import os, sys, time\n"
                   "if os.environ['SYMTUNE_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)"],
                  processes=2, devices=1)
    assert code == 3


@pytest.mark.multiprocess
def test_warm_start_on_two_processes_reads_only_each_process_shards(tmp_path, repo_root):
    from symtune.train.local_launch import launch

    config = get_preset("test-tiny").replace(vocab_size=16384, num_layers=12, embed_dim=1024, num_heads=8,
                                             num_kv_heads=8, head_dim=128, mlp_dim=4096)
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), nnx.to_pure_dict(abstract))
    model_dir = export_hf(config, params, tmp_path / "model", max_shard_bytes=256 << 20)
    del params
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    assert size > 0.9e9  # ~1 GB of float32 tensors in 4 files

    worker = repo_root / "tests" / "warm_start_worker.py"
    assert launch([sys.executable, str(worker), str(model_dir), str(tmp_path)], processes=2, devices=4) == 0
    for process in (0, 1):
        seen = json.loads((tmp_path / f"{process}.json").read_text())
        assert seen["equal"] == seen["shards"]  # every shard held equals the file
        # Each process holds half the parameters (fsdp over both processes' 8 devices), and its
        # resident memory grows by little more while reading them.
        assert seen["held"] <= 0.55 * size
        assert seen["grown"] <= 0.6 * size, f"process {process} grew by {seen['grown'] / size:.2f} x the checkpoint"


@pytest.mark.parametrize("attention, reason", [
    ("splash", "it runs on TPUs only, and this step compiles for cpu"),
    ("cudnn", "it runs on GPUs only, and this step compiles for cpu"),
])
def test_an_attention_kernel_the_platform_lacks_is_one_line_and_exit_2_before_writing(
        tmp_path, data_dir, gin_clean, capsys, attention, reason):
    from symtune import cli as symtune_cli

    code = symtune_cli.main(["train", "--gin_file=runs/tiny_cpu", f"--run_dir={tmp_path / 'run'}",
                             f"--gin.model_config.overrides={{'attention': '{attention}'}}",
                             f"--gin.DataConfig.data_dir='{data_dir}'", "--gin.TrainData.batch_size=8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"DecoderConfig.attention='{attention}': {reason}; use attention='auto' or 'xla'" in err
    assert not (tmp_path / "run").exists()


def test_a_batch_the_mesh_batch_axes_do_not_divide_is_one_line_and_exit_2_before_writing(
        tmp_path, data_dir, gin_clean, capsys):
    from symtune import cli as symtune_cli

    code = symtune_cli.main(["train", "--gin_file=runs/tiny_cpu", f"--run_dir={tmp_path / 'run'}",
                             f"--gin.DataConfig.data_dir='{data_dir}'", "--gin.TrainData.batch_size=4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "batch_size=4 does not split over the mesh's 8 batch shards (replica=1 x data=8 x fsdp=1)" in err
    assert not (tmp_path / "run").exists()
