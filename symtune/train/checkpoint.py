"""Checkpoints on orbax: async saves every N steps, keep the last K, save on preemption, restore
onto any mesh with the data-iterator position, and params-only export / warm start.

Layout: RUN_DIR/checkpoints/<step>/{state, data}; `state` is the train-state pytree (sharded
arrays, written by every process for the shards it owns), `data` a small JSON dict with the data
iterator's position. A step counts only once orbax has committed it (its commit_success.txt
exists): temporary directories of interrupted saves are removed, and committed-looking step
directories without the marker (a torn copy) are renamed `<step>.incomplete` and ignored.

Multi-process: every process constructs the Checkpointer and calls save / restore / wait / close
at the same steps, with its own shards; orbax coordinates the writes and the commit.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import dataclass
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from symtune.errors import UserError
from symtune.train.rundir import run_path

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
# The train state holds the model weights under this key; warm starts read only that subtree.
PARAMS_KEY = "params"
# Orbax writes this file last when it commits a checkpoint (before the atomic rename on local
# disks, as the commit itself on GCS).
COMMIT_MARKER = "commit_success.txt"
INCOMPLETE_SUFFIX = ".incomplete"

log = logging.getLogger(__name__)


@gin.configurable
@dataclass(frozen=True)
class CheckpointConfig:
    """When to save and how many to keep; save_every_steps=0 saves only on preemption or force."""

    save_every_steps: int = 1000
    keep: int | None = 3  # the last K complete checkpoints; None keeps all
    async_save: bool = True

    def __post_init__(self):
        if self.save_every_steps < 0:
            raise UserError(f"save_every_steps must be >= 0 (0: only on preemption), got {self.save_every_steps}")
        if self.keep is not None and self.keep < 1:
            raise UserError(f"keep must be >= 1 or None (keep all), got {self.keep}")


class Checkpointer:
    """Saves and restores (train state, data state) under RUN_DIR/checkpoints; call close() at the end."""

    def __init__(self, run_dir: str | epath.PathLike, config: CheckpointConfig | None = None):
        config = config or CheckpointConfig()  # built here, not at import, so gin bindings apply
        run_dir = epath.Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run directory {run_dir} is a file; pass a directory (it is created if missing)")
        self.config = config
        self.directory = run_dir / CHECKPOINT_DIR
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create checkpoint directory {self.directory}: {e.strerror or e}") from None
        if jax.process_index() == 0:
            _set_aside_torn_steps(self.directory)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("symtune_checkpoint_dir_ready")
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=config.async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=config.keep),
            # Safe: this directory holds nothing but checkpoints. Removes interrupted saves.
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._owns_preemption_handler = False

    def latest_step(self) -> int | None:
        """The newest committed step, or None; saves still in flight do not count."""
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def complete_steps(self) -> list[int]:
        """All committed steps, oldest first."""
        return sorted(s for s in self._manager.all_steps() if is_complete_step(self._step_dir(s)))

    def should_save(self, step: int) -> bool:
        """True every save_every_steps steps and once preemption was requested (see preemption_requested)."""
        every = self.config.save_every_steps
        # Polled first and at every step: in a multi-process job this is where the step is agreed.
        preempted = preemption_requested(step)
        return preempted or (every > 0 and step > 0 and step % every == 0)

    def install_preemption_handler(self) -> None:
        """See the module function install_preemption_handler; close() puts the old handler back."""
        install_preemption_handler()
        self._owns_preemption_handler = True

    def preemption_requested(self, step: int | None = None) -> bool:
        """See the module function preemption_requested; the step may be left out in a single process."""
        if step is None:
            if jax.distributed.is_initialized():
                raise ValueError("in a multi-process job pass the step: preemption_requested(step)")
            return _Preemption.requested
        return preemption_requested(step)

    @staticmethod
    def restore_params(path: str | epath.PathLike, abstract_params: PyTree) -> PyTree:
        """See the module function restore_params (a warm start; needs no Checkpointer)."""
        return restore_params(path, abstract_params)

    def save(self, step: int, train_state: PyTree, data_state: Mapping[str, Any], force: bool = False) -> bool:
        """Starts saving (async by default) if should_save(step) or force; False when nothing was started.

        The arrays are copied off the devices before this returns, so the caller may donate them
        to the next step. A step that is already saved is not written again.
        """
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        try:
            data_state = json.loads(json.dumps(dict(data_state)))
        except TypeError as e:
            raise TypeError(f"data_state must be JSON-serialisable: {e}") from None
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(train_state), DATA_ITEM: ocp.args.JsonSave(data_state)}
            ),
            force=True,
        )

    def restore(self, step: int | None, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
        """Restores (train_state, data_state) at `step` (None: the latest) onto the shardings in
        `abstract_state`, a pytree of jax.ShapeDtypeStruct; None when step is None and nothing is saved."""
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                return None
        elif not is_complete_step(self._step_dir(step)):
            raise UserError(
                f"no complete checkpoint for step {step} in {self.directory}; "
                f"complete steps: {self.complete_steps() or 'none'}"
            )
        _check_abstract(abstract_state)
        _check_matches_saved(self._step_dir(step) / STATE_ITEM, abstract_state, f"checkpoint step {step}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE_ITEM], dict(restored[DATA_ITEM] or {})

    def wait(self) -> None:
        """Blocks until pending async saves are committed (and old steps removed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, releases orbax's threads and any SIGTERM handler it installed."""
        self._manager.close()
        if self._owns_preemption_handler:
            remove_preemption_handler()
            self._owns_preemption_handler = False

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)


def is_complete_step(step_dir: epath.Path) -> bool:
    return (step_dir / COMMIT_MARKER).exists()


def _set_aside_torn_steps(directory: epath.Path) -> None:
    """Renames step directories that orbax would take as committed but that lack the commit marker."""
    for path in directory.iterdir():
        if path.name.isdigit() and path.is_dir() and not is_complete_step(path):
            target = path.parent / f"{path.name}{INCOMPLETE_SUFFIX}"
            n = 1
            while target.exists():  # torn twice at the same step: keep both
                target, n = path.parent / f"{path.name}{INCOMPLETE_SUFFIX}{n}", n + 1
            log.warning("checkpoint %s is incomplete (no %s); ignoring it, moved to %s", path, COMMIT_MARKER, target)
            path.rename(target)


def _check_abstract(abstract: PyTree) -> None:
    """Every leaf must carry its target sharding, or orbax would quietly restore host numpy arrays."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        if getattr(leaf, "sharding", None) is None:
            raise ValueError(
                f"restore target {jax.tree_util.keystr(path)} has no sharding; pass "
                "jax.ShapeDtypeStruct(shape, dtype, sharding=...) leaves"
            )


def _leaf_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """Shapes by a path string that is the same for a namedtuple and for its saved dict form."""

    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {
        "/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _saved_tree(item_dir: epath.Path) -> PyTree:
    """The saved pytree of array metadata (shapes, dtypes) of one checkpoint item."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(item_dir).tree
    finally:
        handler.close()


def _check_matches_saved(item_dir: epath.Path, abstract: PyTree, what: str) -> None:
    """A UserError naming the first array the target and the saved tree disagree on."""
    _compare_shapes(_leaf_shapes(_saved_tree(item_dir)), _leaf_shapes(abstract), what)


def _compare_shapes(saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(wanted.keys() - saved.keys())
    extra = sorted(saved.keys() - wanted.keys())
    wrong = [f"{k} saved {saved[k]}, wanted {wanted[k]}" for k in sorted(wanted.keys() & saved.keys())
             if saved[k] != wanted[k]]
    if missing:
        detail = f"{len(missing)} arrays missing from it (first: {missing[0]})"
    elif extra:
        detail = f"it has {len(extra)} arrays the model lacks (first: {extra[0]})"
    elif wrong:
        detail = f"shapes differ: {wrong[0]}"
    else:
        return
    raise UserError(f"{what} does not match the model: {detail}; restore into the model it was saved from")


# --- preemption -----------------------------------------------------------------------------


class _Preemption:
    requested = False
    installed = False
    previous_handler: Any = None


def install_preemption_handler() -> None:
    """Turns SIGTERM into a request to save at the next step boundary and exit (see preemption_requested).

    In a multi-process job JAX's preemption service already catches SIGTERM on every process and
    agrees on one step for all of them, so nothing is installed there. Under SLURM ask for the
    signal ahead of the time limit (sbatch --signal=TERM@120). Call from the main thread.
    """
    if jax.distributed.is_initialized():
        if not jax.config.jax_enable_preemption_service:
            raise UserError("multi-process preemption needs jax_enable_preemption_service=True (JAX's default)")
        return
    if not _Preemption.installed:
        _Preemption.previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        _Preemption.installed = True


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only a flag: the step in progress must finish before its state can be saved.
    _Preemption.requested = True


def preemption_requested(step: int) -> bool:
    """True from the step at which to save and stop after SIGTERM; every process must call it at
    every step with the same step number (in multi-process jobs it decides the step together)."""
    if not _Preemption.requested and jax.distributed.is_initialized():
        _Preemption.requested = multihost_utils.reached_preemption_sync_point(step)
    return _Preemption.requested


def remove_preemption_handler() -> None:
    """Puts back the SIGTERM handler that was there before and forgets any request."""
    if _Preemption.installed:
        signal.signal(signal.SIGTERM, _Preemption.previous_handler)
    _Preemption.installed = False
    _Preemption.requested = False
    _Preemption.previous_handler = None


# --- params-only export and warm start --------------------------------------------------------


def export_params(
    params: PyTree, out_dir: str | epath.PathLike, dtype: Any = jnp.bfloat16, overwrite: bool = False
) -> epath.Path:
    """Writes a params-only checkpoint, floating arrays cast to `dtype` (None: as they are)."""
    out_dir = run_path(out_dir)  # orbax takes absolute paths only
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; choose a new export directory or pass overwrite=True")
    if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(out_dir, args=ocp.args.StandardSave(params), force=overwrite)
    return out_dir


def restore_params(path: str | epath.PathLike, abstract_params: PyTree) -> PyTree:
    """Reads params onto the shardings and dtypes of `abstract_params` from an export_params
    directory or from one step of a training run (RUN_DIR/checkpoints/<step>): a warm start."""
    path = run_path(path)  # orbax takes absolute paths only
    _check_abstract(abstract_params)
    if not path.is_dir():
        raise UserError(f"no params checkpoint at {path}; pass an export directory or RUN_DIR/checkpoints/<step>")
    if (path / CHECKPOINT_DIR).is_dir():
        raise UserError(f"{path} is a run directory; pass one of its steps, e.g. {path / CHECKPOINT_DIR / '<step>'}")
    if not is_complete_step(path):
        raise UserError(f"{path} is not a complete checkpoint (no {COMMIT_MARKER}); pass a finished export or step")
    if not (path / STATE_ITEM).is_dir():
        _check_matches_saved(path, abstract_params, f"params checkpoint {path}")
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            return checkpointer.restore(path, args=ocp.args.StandardRestore(abstract_params))
    # A training step: read only the params subtree of its train state.
    saved = _saved_tree(path / STATE_ITEM)
    if PARAMS_KEY not in saved:
        raise UserError(f"the train state in {path} has no {PARAMS_KEY!r}; pass an export_params directory")
    _compare_shapes(_leaf_shapes(saved[PARAMS_KEY]), _leaf_shapes(abstract_params), f"params of {path}")
    wanted = {PARAMS_KEY: abstract_params}
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(
            path / STATE_ITEM,
            args=ocp.args.PyTreeRestore(
                item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True
            ),
        )
    return restored[PARAMS_KEY]
