"""Checkpoints: restore onto other meshes, keep-K, torn directories, async saves, data position,
preemption, params-only export and warm start, and the errors a user can cause."""

import os
import signal
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from symtune.errors import UserError
from symtune.train import checkpoint, preemption
from symtune.train.checkpoint import CheckpointConfig, Checkpointer, export_params, restore_params
from symtune.train.mesh import MeshConfig, make_mesh

SPECS = {"dense": P("data", "tensor"), "embed": P("tensor", None), "bias": P(None)}


def mesh_of(data: int, tensor: int):
    return make_mesh(MeshConfig(data=data, tensor=tensor))


def make_params(mesh) -> dict:
    rng = np.random.default_rng(0)
    values = {
        "dense": rng.standard_normal((16, 32), dtype=np.float32),
        "embed": rng.standard_normal((32, 8), dtype=np.float32),
        "bias": rng.standard_normal((32,), dtype=np.float32),
    }
    return {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in values.items()}


def make_state(mesh, step: int = 0) -> dict:
    """A train state like the trainer's: step, params and AdamW state, all sharded on `mesh`."""
    params = make_params(mesh)
    opt_state = jax.jit(optax.adamw(1e-3).init)(params)
    step = jax.device_put(np.int32(step), NamedSharding(mesh, P()))
    return {"step": step, "params": params, "opt_state": opt_state}


def abstract_on(mesh, tree):
    """The restore target: the same shapes and dtypes, each array's spec on `mesh` (scalars replicated)."""

    def target(x):
        spec = x.sharding.spec if isinstance(x.sharding, NamedSharding) else P()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    return jax.tree.map(target, tree)


def assert_same_values(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("target", [(8, 1), (1, 8)], ids=["8x1", "1x8"])
def test_restore_on_other_mesh_gives_same_values(tmp_path, target):
    state = make_state(mesh_of(2, 4), step=5)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=5)) as ckpt:
        assert ckpt.save(5, state, {"start_step": 5, "seed": 1})
    target_mesh = mesh_of(*target)
    abstract = abstract_on(target_mesh, state)
    with Checkpointer(tmp_path) as ckpt:
        restored, data = ckpt.restore(None, abstract)
    assert_same_values(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
        assert got.sharding == want.sharding
    assert restored["params"]["dense"].sharding.mesh.shape["data"] == target[0]
    assert data == {"start_step": 5, "seed": 1}


def test_keeps_only_the_last_k(tmp_path):
    state = make_state(mesh_of(2, 4))
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1, keep=2)) as ckpt:
        for step in range(1, 5):
            assert ckpt.save(step, state, {"start_step": step})
        ckpt.wait()
        assert ckpt.complete_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_torn_checkpoint_is_ignored_in_favour_of_last_complete(tmp_path):
    mesh = mesh_of(2, 4)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1)) as ckpt:
        ckpt.save(1, make_state(mesh, step=1), {"start_step": 1})
        ckpt.save(2, make_state(mesh, step=2), {"start_step": 2})
    root = tmp_path / "checkpoints"
    (root / "2" / checkpoint.COMMIT_MARKER).unlink()  # torn: copied or killed before the commit
    (root / "3.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)  # an interrupted save

    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1)) as ckpt:
        assert ckpt.latest_step() == 1
        restored, data = ckpt.restore(None, abstract_on(mesh, make_state(mesh)))
        assert int(restored["step"]) == 1 and data == {"start_step": 1}
        assert ckpt.save(2, make_state(mesh, step=2), {"start_step": 2})  # step 2 can be written again
        ckpt.wait()
        assert ckpt.latest_step() == 2
    names = set(os.listdir(root))
    assert "2.incomplete" in names and not any("orbax-checkpoint-tmp" in n for n in names)


def test_async_save_survives_donation_and_restores(tmp_path):
    mesh = mesh_of(2, 4)
    state = make_state(mesh, step=3)
    expected = jax.tree.map(np.asarray, state)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=3, async_save=True)) as ckpt:
        assert ckpt.save(3, state, {"start_step": 3})
        for leaf in jax.tree.leaves(state):  # what donating the state to the next step does
            leaf.delete()
        ckpt.wait()
        assert ckpt.latest_step() == 3
        restored, _ = ckpt.restore(3, abstract_on(mesh, make_state(mesh)))
    assert_same_values(jax.tree.map(np.asarray, restored), expected)


def test_data_state_round_trips_with_the_state(tmp_path):
    data_state = {"start_step": 120, "seed": 17, "mixture": {"rates": [0.25, 0.75]}, "note": "résumé"}
    mesh = mesh_of(2, 4)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=0)) as ckpt:
        assert ckpt.save(120, make_state(mesh), data_state, force=True)
    with Checkpointer(tmp_path) as ckpt:
        _, restored = ckpt.restore(120, abstract_on(mesh, make_state(mesh)))
    assert restored == data_state


def test_should_save_every_n_steps_and_save_respects_it(tmp_path):
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=5)) as ckpt:
        assert [s for s in range(12) if ckpt.should_save(s)] == [5, 10]
        state = make_state(mesh_of(2, 4))
        assert not ckpt.save(3, state, {})
        assert ckpt.save(3, state, {}, force=True)
        assert not ckpt.save(3, state, {}, force=True)  # already saved: nothing to do
        ckpt.wait()
        assert ckpt.complete_steps() == [3]


def test_sigterm_requests_a_save_at_the_next_step(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    preemption.install_preemption_handler()
    try:
        with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=100)) as ckpt:
            assert not preemption.preemption_requested(6) and not ckpt.should_save(7)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not preemption.preemption_requested(7) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert preemption.preemption_requested(7)
            assert ckpt.should_save(7) and preemption.preemption_requested(8)  # stays requested
            assert ckpt.preemption_requested()  # a single process may leave out the step
    finally:
        preemption.remove_preemption_handler()
    assert signal.getsignal(signal.SIGTERM) == before
    assert not preemption.preemption_requested(9)


def test_export_params_in_bf16_restores_on_another_mesh(tmp_path):
    params = make_params(mesh_of(2, 4))
    out = export_params(params, tmp_path / "export")
    target = mesh_of(1, 8)
    bf16_target = jax.tree.map(lambda x: x.update(dtype=jnp.bfloat16), abstract_on(target, params))
    as_bf16 = restore_params(out, bf16_target)
    assert_same_values(as_bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    assert as_bf16["dense"].sharding == NamedSharding(target, SPECS["dense"])
    as_f32 = restore_params(out, abstract_on(target, params))  # stored bf16, read back as fp32
    assert_same_values(as_f32, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), params))


def test_warm_start_reads_params_from_a_training_step(tmp_path):
    state = make_state(mesh_of(2, 4), step=4)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=4)) as ckpt:
        ckpt.save(4, state, {})
    params = Checkpointer.restore_params(tmp_path / "checkpoints" / "4", abstract_on(mesh_of(8, 1), state["params"]))
    assert_same_values(params, state["params"])
    other_model = {**abstract_on(mesh_of(8, 1), state["params"])}
    other_model["embed"] = other_model["embed"].update(shape=(64, 8))
    with pytest.raises(UserError, match=r"embed saved \(32, 8\), wanted \(64, 8\)"):
        restore_params(tmp_path / "checkpoints" / "4", other_model)


def test_config_comes_from_gin(tmp_path):
    gin.parse_config("CheckpointConfig.keep = 7")
    try:
        with Checkpointer(tmp_path) as ckpt:
            assert ckpt.config == CheckpointConfig(keep=7)
    finally:
        gin.clear_config()


def test_empty_run_dir_has_nothing_to_restore(tmp_path):
    with Checkpointer(tmp_path / "new_run") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore(None, abstract_on(mesh_of(2, 4), make_state(mesh_of(2, 4)))) is None
        with pytest.raises(UserError, match="no complete checkpoint for step 7"):
            ckpt.restore(7, abstract_on(mesh_of(2, 4), make_state(mesh_of(2, 4))))


def test_restoring_into_a_different_model_is_a_user_error(tmp_path):
    mesh = mesh_of(2, 4)
    state = make_state(mesh)
    with Checkpointer(tmp_path, CheckpointConfig(save_every_steps=1)) as ckpt:
        ckpt.save(1, state, {})
        bigger = abstract_on(mesh, state)
        bigger["params"]["bias"] = jax.ShapeDtypeStruct((64,), jnp.float32, sharding=NamedSharding(mesh, P()))
        with pytest.raises(UserError, match=r"params/bias saved \(32,\), wanted \(64,\)"):
            ckpt.restore(1, bigger)
        with pytest.raises(UserError, match="missing from it"):
            ckpt.restore(1, {**abstract_on(mesh, state), "ema": bigger["params"]["bias"]})


def test_bad_paths_are_user_errors(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    abstract = abstract_on(mesh_of(2, 4), make_params(mesh_of(2, 4)))
    with pytest.raises(UserError, match="is a file"):
        Checkpointer(a_file)
    with pytest.raises(UserError, match="no params checkpoint"):
        restore_params(tmp_path / "missing", abstract)
    Checkpointer(tmp_path / "run").close()
    with pytest.raises(UserError, match="is a run directory"):
        restore_params(tmp_path / "run", abstract)
    with pytest.raises(UserError, match="already exists"):
        export_params(make_params(mesh_of(2, 4)), tmp_path / "run")


def test_config_values_are_checked():
    with pytest.raises(UserError, match="keep"):
        CheckpointConfig(keep=0)
    with pytest.raises(UserError, match="save_every_steps"):
        CheckpointConfig(save_every_steps=-1)
