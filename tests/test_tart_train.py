"""Training the TART head on the shared trainer: sharding, determinism, resume, export."""

import dataclasses
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

from symtune.train.checkpoint import export_params
from symtune.train.mesh import MeshConfig
from symtune.train.optim import OptimizerConfig
from symtune.train.trainer import TrainerConfig
from symtune.errors import UserError
from tart.head import HeadConfig, TartHead, interleave
from tart.synthetic import SyntheticConfig, step_batches
from tart.train import TartRunConfig, build_trainer, load_head, save_head, train

TINY = HeadConfig(num_layers=2, width=32, num_heads=4, max_examples=12)
DATA = SyntheticConfig(max_examples=12, examples_start=6, examples_increment=3, interval=2)


def run_steps(mesh_config, steps=3, batch=16, microbatches=1):
    trainer = build_trainer(TINY, DATA, 9, mesh_config,
                            TrainerConfig(steps=steps, microbatches=microbatches),
                            OptimizerConfig(learning_rate=1e-3))
    state = trainer.init_state()
    batches = step_batches(range(batch), 0)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, trainer.global_batch(next(batches)))
        losses.append(float(metrics["loss"]))
    return state, losses, metrics


def params_of(state):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
            jax.tree_util.tree_leaves_with_path(state["params"])}


def test_head_trains_the_same_on_8_devices_under_dp_and_fsdp_with_microbatches():
    dp_state, dp, metrics = run_steps(MeshConfig(rules="dp"))
    # Rows are sampled from (step, row) ids, so splitting the batch into microbatches changes nothing.
    fsdp_state, fsdp, _ = run_steps(MeshConfig(data=1, fsdp=8, rules="fsdp"), microbatches=2)
    assert all(np.isfinite(dp)) and {"accuracy", "tokens", "grad_norm"} <= set(metrics)
    np.testing.assert_allclose(fsdp, dp, rtol=1e-5)
    spec = fsdp_state["params"]["stack"]["layers"]["mlp"]["wi"].sharding.spec
    assert "fsdp" in str(spec)
    for name, value in params_of(fsdp_state).items():
        np.testing.assert_allclose(value, params_of(dp_state)[name], atol=1e-5, err_msg=name)


def test_token_layouts():
    xs = np.arange(12, dtype=np.float32).reshape(1, 2, 6)
    ys = np.array([[1.0, 0.0]], np.float32)
    paper = np.asarray(interleave(xs, ys, "paper"))
    np.testing.assert_array_equal(paper[0], [xs[0, 0], [1, 0, 0, 0, 0, 0], xs[0, 1], [0] * 6])
    paired = np.asarray(interleave(xs, ys, "paired"))
    np.testing.assert_array_equal(paired[0], [[*xs[0, 0], 0], [*xs[0, 0], 1], [*xs[0, 1], 0], [*xs[0, 1], -1]])
    with pytest.raises(UserError, match="unknown TART token layout 'pairs'"):
        HeadConfig(tokens="pairs")


@pytest.mark.parametrize("tokens", ["paper", "paired"])
def test_each_prediction_sees_only_the_examples_before_it(tokens):
    head = TartHead(HeadConfig(num_layers=2, width=32, num_heads=4, max_examples=12, tokens=tokens), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, 8, 16)).astype(np.float32)
    ys = (rng.random((1, 8)) > 0.5).astype(np.float32)
    base = np.asarray(head(xs, ys))
    changed_xs, changed_ys = xs.copy(), ys.copy()
    changed_ys[0, 4:] = 1 - changed_ys[0, 4:]  # y_4 onwards
    changed_xs[0, 5:] += 1.0  # x_5 onwards
    out = np.asarray(head(changed_xs, changed_ys))
    np.testing.assert_allclose(out[0, :5], base[0, :5], atol=1e-6)
    assert not np.allclose(out[0, 5:], base[0, 5:])


def test_head_attention_choice_reaches_its_decoder_with_the_same_predictions():
    from symtune.models import cpu_attention

    config = HeadConfig(num_layers=2, width=32, num_heads=4, max_examples=12)
    xs = np.random.default_rng(0).standard_normal((2, 12, 16)).astype(np.float32)
    ys = (xs[..., 0] > 0).astype(np.float32)
    predictions = {}
    for attention in ("auto", "xla"):
        head = TartHead(dataclasses.replace(config, attention=attention), rngs=nnx.Rngs(3))
        graph, state = nnx.split(head)
        forward = jax.jit(lambda s, x, y: nnx.merge(graph, s)(x, y))
        assert (cpu_attention.FORWARD in forward.lower(state, xs, ys).as_text()) == (attention == "auto")
        predictions[attention] = np.asarray(forward(state, xs, ys))
    np.testing.assert_allclose(predictions["auto"], predictions["xla"], atol=1e-5)
    with pytest.raises(UserError, match="DecoderConfig.attention='flash'"):
        dataclasses.replace(config, attention="flash").decoder()


@pytest.mark.parametrize("tokens", ["paper", "paired"])
def test_saved_head_loads_back_with_the_same_predictions(tmp_path, tokens, monkeypatch):
    config = HeadConfig(num_layers=2, width=32, num_heads=4, max_examples=12, tokens=tokens)
    head = TartHead(config, rngs=nnx.Rngs(3))
    save_head(config, nnx.state(head, nnx.Param), tmp_path / "head")
    monkeypatch.chdir(tmp_path)
    loaded = load_head("head")  # relative, as on a command line
    xs = np.random.default_rng(0).standard_normal((2, 12, 16)).astype(np.float32)
    ys = (xs[..., 0] > 0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(xs, ys)), np.asarray(head(xs, ys)), atol=1e-6)


def _bind_tiny(run_dir, steps):
    gin.clear_config()
    gin.parse_config([
        "head_config.preset = 'tart-cpu'",
        "head_config.overrides = {'num_layers': 2, 'width': 32, 'num_heads': 4, 'max_examples': 12}",
        "SyntheticConfig.max_examples = 12", "SyntheticConfig.examples_start = 12",
        "SyntheticConfig.dims_start = 8", "SyntheticConfig.interval = 2",
        f"TrainerConfig.steps = {steps}", "TrainerConfig.log_every = 2",
        "OptimizerConfig.learning_rate = 1e-3", "CheckpointConfig.save_every_steps = 2",
        "CheckpointConfig.async_save = False", "TartRunConfig.batch_size = 16",
        f"TartRunConfig.run_dir = '{run_dir}'",
    ])


def test_train_resumes_to_the_same_params_as_an_uninterrupted_run(tmp_path):
    try:
        _bind_tiny(tmp_path / "whole", 4)
        train(TartRunConfig())
        _bind_tiny(tmp_path / "split", 2)
        train(TartRunConfig())  # stops at 2, checkpointed
        _bind_tiny(tmp_path / "split", 4)
        summary = train(TartRunConfig())  # resumes from 2 (dims grow at step 2: the curriculum too)
    finally:
        gin.clear_config()
    assert summary["history"][0]["step"] == 4
    whole, split = load_head(tmp_path / "whole" / "head"), load_head(tmp_path / "split" / "head")
    for a, b in zip(jax.tree.leaves(nnx.state(whole)), jax.tree.leaves(nnx.state(split))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _BucketOnDisk:
    """fsspec's local filesystem standing in for GCS: gs://NAME/... is ROOT/NAME/... ."""

    def __init__(self, root):
        import fsspec

        self.root, self.local = root, fsspec.filesystem("file")

    def on_disk(self, path) -> str:
        path = str(path)
        return str(self.root / path.removeprefix("gs://")) if path.startswith("gs://") else path

    def __getattr__(self, name):
        method = getattr(self.local, name)
        return lambda path, *args, **kwargs: method(self.on_disk(path), *args, **kwargs)


def test_bucket_run_dir_stays_a_url_from_config_to_checkpoints_metrics_and_head(tmp_path, monkeypatch):
    from clu import metric_writers
    from etils.epath import backend

    import tart.train

    bucket = _BucketOnDisk(tmp_path / "gcs")
    # epath sends gs:// paths to TensorFlow's GCS client, or to fsspec's without TensorFlow; both go to
    # fsspec here, whose filesystem is a local folder. Orbax writes arrays through tensorstore, which
    # has no such hook, so the three writers below record the path they are handed and write there.
    monkeypatch.setattr(backend, "tf_backend", backend.fsspec_backend)
    monkeypatch.setattr(backend.fsspec_backend, "fs", lambda path: bucket)
    handed = {}

    class CheckpointerOnDisk(tart.train.Checkpointer):
        def __init__(self, run_dir, config=None):
            handed["checkpoints"] = str(run_dir)
            super().__init__(bucket.on_disk(run_dir), config)

    def export_on_disk(params, out_dir, **kwargs):
        handed["head params"] = str(out_dir)
        return export_params(params, bucket.on_disk(out_dir), **kwargs)

    create_writer = metric_writers.create_default_writer

    def writer_on_disk(logdir, **kwargs):
        handed["tensorboard"] = logdir
        return create_writer(bucket.on_disk(logdir), **kwargs)

    monkeypatch.setattr(tart.train, "Checkpointer", CheckpointerOnDisk)
    monkeypatch.setattr(tart.train, "export_params", export_on_disk)
    monkeypatch.setattr(metric_writers, "create_default_writer", writer_on_disk)
    monkeypatch.chdir(tmp_path)
    try:
        _bind_tiny("gs://bucket/tart", 2)
        summary = train(TartRunConfig())
    finally:
        gin.clear_config()
    assert summary["last_step"] == 2
    assert handed == {"checkpoints": "gs://bucket/tart", "tensorboard": "gs://bucket/tart/tensorboard",
                      "head params": "gs://bucket/tart/head/params"}
    run_dir = tmp_path / "gcs" / "bucket" / "tart"
    assert {"config.gin", "run.json", "checkpoints", "tensorboard", "head"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "head" / "head.json").is_file()
    assert not (tmp_path / "gs:").exists()  # what a resolved local path would have made


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_params(tmp_path, repo_root):
    """`tart train` killed with SIGKILL after a checkpoint, rerun, ends where an unkilled run does."""
    common = [
        "--gin.head_config.overrides={'num_layers': 2, 'width': 32, 'num_heads': 4, 'max_examples': 12}",
        "--gin.SyntheticConfig.max_examples=12", "--gin.SyntheticConfig.examples_start=6",
        "--gin.SyntheticConfig.interval=20", "--gin.TrainerConfig.steps=400",
        "--gin.TartRunConfig.batch_size=16", "--gin.CheckpointConfig.save_every_steps=20",
        "--gin.CheckpointConfig.keep=None",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "tart.cli", "train"]
    subprocess.run(cmd + common + [f"--run_dir={tmp_path / 'whole'}"], env=env, check=True, cwd=repo_root,
                   capture_output=True)
    victim = subprocess.Popen(cmd + common + [f"--run_dir={tmp_path / 'killed'}"], env=env, cwd=repo_root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if any((d / "commit_success.txt").exists() for d in checkpoints.glob("*")):
            break
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "head").exists(), "the run finished before it could be killed"
    subprocess.run(cmd + common + [f"--run_dir={tmp_path / 'killed'}"], env=env, check=True, cwd=repo_root,
                   capture_output=True)
    whole, killed = load_head(tmp_path / "whole" / "head"), load_head(tmp_path / "killed" / "head")
    for a, b in zip(jax.tree.leaves(nnx.state(whole)), jax.tree.leaves(nnx.state(killed))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
