"""Corrupted checkpoints: damaged files are detected on restore (decode errors, on-device
fingerprints of the array bits), set aside as `<step>.corrupt`, and the run resumes from the
previous step; eval/export refuse them; a failing save is one line and keeps the last step."""

import errno
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from symtune.errors import UserError
from symtune.train import checkpoint
from symtune.train.fingerprints import fingerprints
from symtune.train.checkpoint import CheckpointConfig, Checkpointer, CorruptCheckpoint, restore_params
from test_checkpoint import abstract_on, assert_same_values, make_state, mesh_of


def state_at(mesh, step: int) -> dict:
    """A train state with float32, bfloat16 and int32 leaves whose values depend on `step`."""
    state = make_state(mesh, step=step)
    state["params"] = jax.tree.map(lambda x: x + step, state["params"])
    rng = np.random.default_rng(step)
    state["params"]["bf16"] = jax.device_put(rng.standard_normal((16, 8)).astype(jnp.bfloat16),
                                             NamedSharding(mesh, P("data", None)))
    state["counts"] = jax.device_put(rng.integers(-1000, 1000, (32,), dtype=np.int32), NamedSharding(mesh, P("data")))
    return state


# Every kind of file orbax reads back from a step (commit markers are only checked to exist).
# ocdbt.process_<i>/ is each process's write log, merged into the step's own ocdbt at commit and
# never read on restore (test_per_process_write_logs_are_not_read); damage there cannot matter.
FILE_KINDS = {
    "checkpoint metadata": lambda rel: rel == "_CHECKPOINT_METADATA",
    "data position JSON": lambda rel: rel == "data/metadata",
    "fingerprints JSON": lambda rel: rel == "fingerprints/metadata",
    "array tree metadata JSON": lambda rel: rel == "state/_METADATA",
    "sharding JSON": lambda rel: rel == "state/_sharding",
    "per-process array metadata": lambda rel: rel.startswith("state/array_metadatas/"),
    "ocdbt manifest": lambda rel: rel == "state/manifest.ocdbt",
    "array data": lambda rel: rel.startswith("state/d/"),
}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run directory with complete steps 1 and 2, and the states saved at them."""
    run = tmp_path_factory.mktemp("saved") / "run"
    mesh = mesh_of(2, 4)
    states = {step: state_at(mesh, step) for step in (1, 2)}
    with Checkpointer(run, CheckpointConfig(save_every_steps=1)) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, {"start_step": step, "seed": 0})
    return run, states


def step_files(step_dir) -> list[str]:
    return sorted(str(p.relative_to(step_dir)) for p in Path(step_dir).rglob("*")
                  if p.is_file() and p.name != checkpoint.COMMIT_MARKER and "ocdbt.process_" not in str(p))


def overwrite_random_bytes(path, rng, count: int = 5) -> None:
    data = bytearray(path.read_bytes())
    before = bytes(data)
    while bytes(data) == before:
        for i in rng.integers(0, len(data), count):
            data[i] = rng.integers(0, 256)
    path.write_bytes(bytes(data))


def copy_run(saved, to):
    shutil.copytree(saved, to)
    return to


def test_every_file_kind_of_a_step_is_covered_by_the_drill(saved_run):
    run, _ = saved_run
    for rel in step_files(run / "checkpoints" / "2"):
        assert any(match(rel) for match in FILE_KINDS.values()), f"{rel} is of no kind the drill damages"


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_damaged_newest_step_is_set_aside_and_the_previous_one_restored(saved_run, tmp_path, capsys, kind):
    run, states = saved_run
    mesh = mesh_of(2, 4)
    for trial in range(5):
        # A fresh path each trial: tensorstore caches what it read by path.
        copy = copy_run(run, tmp_path / f"trial{trial}")
        step_dir = copy / "checkpoints" / "2"
        targets = [step_dir / rel for rel in step_files(step_dir) if FILE_KINDS[kind](rel)]
        assert targets
        rng = np.random.default_rng(trial)
        for path in targets:
            overwrite_random_bytes(path, rng)
        with Checkpointer(copy) as ckpt:
            restored, data = ckpt.restore(None, abstract_on(mesh, states[1]))
            assert ckpt.complete_steps() == [1]
        assert data == {"start_step": 1, "seed": 0}, f"trial {trial}"
        assert_same_values(restored, states[1])
        assert not step_dir.exists() and (copy / "checkpoints" / "2.corrupt").is_dir(), f"trial {trial}"
        lines = [line for line in capsys.readouterr().out.splitlines() if "corrupt" in line]
        assert len(lines) == 1 and lines[0].startswith("checkpoint step 2 is corrupt ("), lines


def test_a_bug_while_restoring_does_not_set_aside_a_good_step(saved_run, tmp_path, monkeypatch):
    from symtune.train import fingerprints as fingerprints_module

    def broken(*args, **kwargs):
        raise TypeError("a bug in symtune, not damage")

    copy = copy_run(saved_run[0], tmp_path / "run")
    monkeypatch.setattr(fingerprints_module, "verify", broken)
    with Checkpointer(copy) as ckpt:
        with pytest.raises(TypeError, match="a bug in symtune"):
            ckpt.restore(None, abstract_on(mesh_of(2, 4), saved_run[1][2]))
        assert ckpt.complete_steps() == [1, 2]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["1", "2"]


def test_per_process_write_logs_are_not_read(saved_run, tmp_path):
    copy = copy_run(saved_run[0], tmp_path / "run")
    for log_dir in (copy / "checkpoints" / "2" / "state").glob("ocdbt.process_*"):
        shutil.rmtree(log_dir)
    with Checkpointer(copy) as ckpt:
        restored, _ = ckpt.restore(None, abstract_on(mesh_of(2, 4), saved_run[1][2]))
    assert_same_values(restored, saved_run[1][2])


def test_fingerprints_catch_one_flipped_bit_and_do_not_depend_on_the_mesh():
    state = state_at(mesh_of(2, 4), 3)
    prints = fingerprints(state)
    assert prints == fingerprints(abstract_on(mesh_of(8, 1), state) and
                                             jax.device_put(state, jax.tree.map(lambda a: a.sharding,
                                                                                abstract_on(mesh_of(8, 1), state))))
    for name in ("params/dense", "params/bf16", "counts"):
        leaf = state
        for key in name.split("/"):
            leaf = leaf[key]
        host = np.asarray(leaf).copy()
        bits = host.view(np.uint16 if host.dtype.itemsize == 2 else np.uint32)
        bits.reshape(-1)[7] ^= 1
        flipped = jax.device_put(host, leaf.sharding)
        assert fingerprints({"x": flipped})["x"] != fingerprints({"x": leaf})["x"], name
    # Swapping two elements keeps the plain sum; the position-weighted parts must still differ.
    v = jnp.arange(8, dtype=jnp.float32)
    assert fingerprints({"x": v})["x"] != fingerprints({"x": v[::-1]})["x"]


def test_an_explicit_corrupt_step_is_set_aside_and_reported(saved_run, tmp_path, capsys):
    copy = copy_run(saved_run[0], tmp_path / "run")
    overwrite_random_bytes(next((copy / "checkpoints" / "2" / "state" / "d").iterdir()), np.random.default_rng(0))
    with Checkpointer(copy) as ckpt:
        with pytest.raises(CorruptCheckpoint, match=r"checkpoint 2 is corrupt: .*set aside as .*2\.corrupt"):
            ckpt.restore(2, abstract_on(mesh_of(2, 4), saved_run[1][2]))


def test_when_every_step_is_corrupt_it_stops_naming_where_they_went(saved_run, tmp_path, capsys):
    copy = copy_run(saved_run[0], tmp_path / "run")
    for step in (1, 2):
        overwrite_random_bytes(copy / "checkpoints" / str(step) / "state" / "_METADATA", np.random.default_rng(step))
    with Checkpointer(copy) as ckpt:
        with pytest.raises(UserError, match="all checkpoints in .* are unreadable; set aside as .*2.corrupt, .*1.corrupt"):
            ckpt.restore(None, abstract_on(mesh_of(2, 4), saved_run[1][2]))
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["1.corrupt", "2.corrupt"]


def test_params_restore_of_a_corrupt_step_refuses_with_one_line(saved_run, tmp_path):
    copy = copy_run(saved_run[0], tmp_path / "run")
    step_dir = copy / "checkpoints" / "2"
    params = saved_run[1][2]["params"]
    assert_same_values(restore_params(step_dir, abstract_on(mesh_of(2, 4), params)), params)
    shutil.rmtree(copy)
    copy = copy_run(saved_run[0], tmp_path / "run2")
    step_dir = copy / "checkpoints" / "2"
    for data_file in (step_dir / "state" / "d").iterdir():
        overwrite_random_bytes(data_file, np.random.default_rng(1))
    with pytest.raises(CorruptCheckpoint) as caught:
        restore_params(step_dir, abstract_on(mesh_of(2, 4), params))
    assert len(str(caught.value).splitlines()) == 1 and str(caught.value).startswith(f"checkpoint {step_dir} is corrupt: ")
    assert step_dir.is_dir()  # eval and export only read; they never move a run's checkpoints


@pytest.mark.parametrize("dtype", [jnp.bfloat16, None])
def test_a_damaged_params_export_refuses_with_one_line(tmp_path, dtype):
    from symtune.train.checkpoint import EXPORT_FINGERPRINTS, export_params

    params = state_at(mesh_of(2, 4), 3)["params"]
    out = export_params(params, tmp_path / "export", dtype=dtype)
    assert (out / EXPORT_FINGERPRINTS).is_file()
    target = abstract_on(mesh_of(4, 2), params)
    as_exported = jax.tree.map(lambda x: x.astype(dtype).astype(x.dtype) if dtype and x.dtype.kind == "f" else x, params)
    assert_same_values(restore_params(out, target), as_exported)
    for trial in range(5):
        copy = Path(shutil.copytree(out, tmp_path / f"trial{trial}"))
        rng = np.random.default_rng(trial)
        for data_file in (copy / "d").iterdir():
            overwrite_random_bytes(data_file, rng)
        with pytest.raises(CorruptCheckpoint) as caught:
            restore_params(copy, target)
        assert len(str(caught.value).splitlines()) == 1 and str(caught.value).startswith(f"checkpoint {copy} is corrupt: ")
    # Files that decode but are not what was saved (another export's, copied over it): only the
    # fingerprints can tell.
    other = export_params(state_at(mesh_of(2, 4), 4)["params"], tmp_path / "other", dtype=dtype)
    mixed = Path(shutil.copytree(other, tmp_path / "mixed"))
    shutil.copy(out / EXPORT_FINGERPRINTS, mixed / EXPORT_FINGERPRINTS)
    with pytest.raises(CorruptCheckpoint, match=r"is corrupt: array \S+ differs from what was saved"):
        restore_params(mixed, target)


def test_a_failing_save_is_one_line_and_keeps_the_previous_step(tmp_path, monkeypatch):
    mesh = mesh_of(2, 4)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1)) as ckpt:
        ckpt.save(1, state_at(mesh, 1), {"start_step": 1})
        ckpt.wait()

        def disk_full(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        monkeypatch.setattr(epath.Path, "write_text", disk_full)
        monkeypatch.setattr(epath.Path, "write_bytes", disk_full)
        with pytest.raises(UserError) as caught:
            ckpt.save(2, state_at(mesh, 2), {"start_step": 2})
            ckpt.wait()
    # The disk stays full until the checkpointer has closed: its background writes end first.
    monkeypatch.undo()
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "saving step 2 to" in message and "No space left on device" in message
    assert "the last complete checkpoint (step 1) is intact" in message
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.complete_steps() == [1]
        restored, _ = ckpt.restore(None, abstract_on(mesh, state_at(mesh, 1)))
    assert_same_values(restored, state_at(mesh, 1))


def test_train_rerun_over_a_damaged_newest_step_resumes_from_the_previous_one_bit_identically(
        tmp_path, data_dir, capsys):
    import gin

    from symtune import cli as symtune_cli
    from symtune.config import parse_gin
    from symtune.train.run import RunConfig, train
    from test_train_run import SMALL, trained_params

    bindings = SMALL + ["TrainerConfig.steps=10", "CheckpointConfig.save_every_steps=5", "CheckpointConfig.keep=None",
                        f"DataConfig.data_dir='{data_dir}'"]
    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    try:
        for run in (whole, damaged):
            gin.clear_config()
            parse_gin(["runs/tiny_cpu"], bindings)
            train(RunConfig(run_dir=str(run)))
        # The reported case: a few files of the newest step overwritten with random bytes.
        step_dir = damaged / "checkpoints" / "10"
        rng = np.random.default_rng(0)
        for rel in step_files(step_dir):
            overwrite_random_bytes(step_dir / rel, rng)
        capsys.readouterr()
        code = symtune_cli.main(["export", "--checkpoint", str(step_dir), "--out", str(tmp_path / "export")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "is corrupt" in err and "Traceback" not in err
        gin.clear_config()
        parse_gin(["runs/tiny_cpu"], bindings)
        summary = train(RunConfig(run_dir=str(damaged)))
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    assert "checkpoint step 10 is corrupt (" in out and "resuming from step 5" in out
    assert summary["last_step"] == 10 and (damaged / "checkpoints" / "10.corrupt").is_dir()
    expected = trained_params(whole)
    for name, value in trained_params(damaged).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
