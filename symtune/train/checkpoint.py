"""Checkpoints on orbax: async saves every N steps, keep the last K, save on preemption, restore
onto any mesh with the data-iterator position, and params-only export / warm start.

Layout: RUN_DIR/checkpoints/<step>/{state, data}; `state` is the train-state pytree (sharded
arrays, written by every process for the shards it owns), `data` a small JSON dict with the data
iterator's position. A step counts only once orbax has committed it (its commit_success.txt
exists): temporary directories of interrupted saves are removed, and committed-looking step
directories without the marker (a torn copy) are renamed `<step>.incomplete` and ignored.

Each step also holds `fingerprints`: a few uint32 per array, computed on device over the array's
bits when it is saved, and a digest of the data state. Restore recomputes them on device over what
it read and compares, so a step whose files were damaged after the commit (bit rot, a half-copied
bucket object) is caught without reading the data twice. A step whose files do not decode or whose
fingerprints differ is renamed `<step>.corrupt` (never deleted) and the previous step is used.
A params-only export carries the same record (`fingerprints.json`); reading a damaged one refuses.

Multi-process: every process constructs the Checkpointer and calls save / restore / wait / close
at the same steps, with its own shards; orbax coordinates the writes and the commit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from symtune.errors import UserError
from symtune.train import fingerprints
from symtune.train.preemption import (install_preemption_handler, preemption_requested,
                                       remove_preemption_handler)
from symtune.train.rundir import run_path

PyTree = Any

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
FINGERPRINT_ITEM = "fingerprints"
EXPORT_FINGERPRINTS = "fingerprints.json"  # beside an export_params checkpoint
# The train state holds the model weights under this key; warm starts read only that subtree.
PARAMS_KEY = "params"
# Orbax writes this file last when it commits a checkpoint (before the atomic rename on local
# disks, as the commit itself on GCS).
COMMIT_MARKER = "commit_success.txt"
INCOMPLETE_SUFFIX = ".incomplete"
CORRUPT_SUFFIX = ".corrupt"
# The small JSON files orbax writes into a step; checked to decode before anything is restored.
_ORBAX_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")

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
        self._saving: int | None = None  # the step of the last save started, named if it fails
        self._save_error_reported = False

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
        """See preemption.install_preemption_handler; close() puts the old handler back."""
        install_preemption_handler()
        self._owns_preemption_handler = True

    def preemption_requested(self, step: int | None = None) -> bool:
        """See preemption.preemption_requested."""
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
        items = {
            STATE_ITEM: ocp.args.StandardSave(train_state),
            DATA_ITEM: ocp.args.JsonSave(data_state),
            FINGERPRINT_ITEM: ocp.args.JsonSave(fingerprints.make_record(train_state, data_state)),
        }
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except jax.errors.JaxRuntimeError:  # a collective or device failure (a lost process), not storage
            raise
        except Exception as e:  # noqa: BLE001  an earlier async save may surface here too
            raise self._save_failed(step, e) from None
        self._saving = step
        return started

    def restore(self, step: int | None, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
        """Restores (train_state, data_state) at `step` (None: the latest) onto the shardings in
        `abstract_state`, a pytree of jax.ShapeDtypeStruct; None when step is None and nothing is saved.

        A step that does not decode or whose arrays differ from their save-time fingerprints is
        set aside as `<step>.corrupt`; with step None the next older step is tried, and when every
        step was corrupt a UserError lists where they went. With an explicit step, CorruptCheckpoint.
        """
        self.wait()
        _check_abstract(abstract_state)
        if step is not None:
            if not is_complete_step(self._step_dir(step)):
                raise UserError(
                    f"no complete checkpoint for step {step} in {self.directory}; "
                    f"complete steps: {self.complete_steps() or 'none'}"
                )
            return self._restore_or_set_aside(step, abstract_state)
        moved = []
        for candidate in reversed(self.complete_steps()):
            try:
                return self._restore_or_set_aside(candidate, abstract_state)
            except CorruptCheckpoint as e:
                moved.append(str(e.moved_to))
        if moved:
            raise UserError(f"all checkpoints in {self.directory} are unreadable; set aside as {', '.join(moved)}")
        return None

    def _restore_or_set_aside(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]]:
        # Two phases, each agreed by every process before the next: the reads are each process's
        # own (its shards), the fingerprints a computation they all take part in.
        def set_aside(reason: str) -> CorruptCheckpoint:
            return CorruptCheckpoint(step, reason, self._set_aside(step, reason))

        state, data_state, record = _agreed(lambda: self._read(step, abstract_state), set_aside)
        if record is not None:
            _agreed(lambda: fingerprints.verify(state, record, data_state=data_state), set_aside)
        return _cast_like(state, abstract_state), data_state

    def _read(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any], dict[str, Any] | None]:
        """This process's read of `step`: (state in the saved dtypes, data state, fingerprint record)."""
        step_dir = self._step_dir(step)
        _check_json_files(step_dir)
        _check_matches_saved(step_dir / STATE_ITEM, abstract_state, f"checkpoint step {step}")
        record = None
        if (step_dir / FINGERPRINT_ITEM).is_dir():  # steps saved before fingerprints: unchecked
            record = _read_item_json(step_dir, FINGERPRINT_ITEM)
        target = fingerprints.as_saved_dtypes(abstract_state, record)
        state = _restore_item(ocp.StandardCheckpointHandler(), step_dir / STATE_ITEM, ocp.args.StandardRestore(target))
        return state, _read_item_json(step_dir, DATA_ITEM), record

    def _set_aside(self, step: int, reason: str) -> epath.Path:
        path = self._step_dir(step)
        target = _free_name(path, CORRUPT_SUFFIX)
        if jax.process_index() == 0:
            print(f"checkpoint step {step} is corrupt ({reason}); set aside as {target}")
            path.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"symtune_checkpoint_set_aside_{step}")
        self._manager.reload()
        return target

    def _save_failed(self, step: int | None, error: Exception) -> UserError:
        self._save_error_reported = True
        previous = self.latest_step()
        kept = f"the last complete checkpoint (step {previous}) is intact" if previous is not None else "no earlier checkpoint exists"
        at = f"step {step}" if step is not None else "a checkpoint"
        return UserError(f"saving {at} to {self.directory} failed: {_describe(error)}; {kept}; free space or fix access and rerun")

    def wait(self) -> None:
        """Blocks until pending async saves are committed (and old steps removed)."""
        try:
            self._manager.wait_until_finished()
        except jax.errors.JaxRuntimeError:
            raise
        except Exception as e:  # noqa: BLE001  the error of a background save
            raise self._save_failed(self._saving, e) from None

    def close(self) -> None:
        """Waits for pending saves, releases orbax's threads and any SIGTERM handler it installed."""
        try:
            if not self._save_error_reported:
                self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001
                if not self._save_error_reported:  # orbax raises a failed save again on close
                    raise
            if self._owns_preemption_handler:
                remove_preemption_handler()
                self._owns_preemption_handler = False

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)


class CorruptCheckpoint(UserError):
    """A checkpoint step that does not decode or does not match its fingerprints; it was set aside."""

    def __init__(self, step: int | str, reason: str, moved_to: epath.Path | None):
        where = f"; set aside as {moved_to}" if moved_to is not None else ""
        super().__init__(f"checkpoint {step} is corrupt: {reason}{where}")
        self.step, self.reason, self.moved_to = step, reason, moved_to


def is_complete_step(step_dir: epath.Path) -> bool:
    return (step_dir / COMMIT_MARKER).exists()


def _free_name(path: epath.Path, suffix: str) -> epath.Path:
    target, n = path.parent / f"{path.name}{suffix}", 1
    while target.exists():  # set aside twice at the same step: keep both
        target, n = path.parent / f"{path.name}{suffix}{n}", n + 1
    return target


# How tensorstore ends a message about a failed system call: "...: File too large [os_error_code='27']".
_OS_ERROR = re.compile(r"([^:\]]+) \[os_error_code='?(\d+)'?\]")


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)


def _describe(error: BaseException) -> str:
    """The error in a few words: the operating system's reason where one is known."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (_Undecodable, fingerprints.Mismatch)):  # already in our words
        return text
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})" + (f": {error.filename}" if error.filename else "")
    if match := _OS_ERROR.search(text):
        return f"{match.group(1).strip()} (errno {match.group(2)})"
    for code in _STORAGE_ERRNOS:  # tensorstore does not always append the code
        if os.strerror(code) in text:
            return f"{os.strerror(code)} (errno {code})"
    return f"{type(error).__name__}: {text if len(text) <= 240 else text[:120] + ' ... ' + text[-120:]}"


def _agreed(part: Callable[[], Any], damaged: Callable[[str], Exception]) -> Any:
    """`part`'s result (this process's share of a read), unless it found the files damaged on any
    process: then every process raises `damaged(reason)` together. Every process calls it."""
    reason = None
    try:
        result = part()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  narrowed by _is_damage
        if not _is_damage(e):
            raise
        reason = _describe(e)
    if _any_process(reason is not None):
        raise damaged(reason or "another process could not read it")
    return result


def _restore_item(handler: ocp.CheckpointHandler, directory: epath.Path, args: ocp.args.CheckpointArgs) -> PyTree:
    """This process's shards of one item, through its handler alone: orbax's Checkpointer and
    CheckpointManager end a restore in a barrier across processes, which a process whose read
    failed would skip while the others wait in it; `_agreed` settles the outcome instead."""
    try:
        return handler.restore(directory, args=args)
    finally:
        handler.close()


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class _Undecodable(ValueError):
    """A checkpoint file that does not decode."""


# Where the errors of reading damaged files come from: the libraries that decode checkpoint files.
_READERS = {"orbax", "tensorstore", "json", "etils", "msgpack", "zarr"}


def _is_damage(error: BaseException) -> bool:
    """Whether `error` says the files are damaged: one of our own checks, or an error raised while
    a decoding library was reading. Anything else (a bug of ours) must not cost a good step."""
    if isinstance(error, (_Undecodable, fingerprints.Mismatch)):
        return True
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] in _READERS:
            return True
        tb = tb.tb_next
    return False


def _check_json_files(step_dir: epath.Path) -> None:
    """Orbax tolerates some of its metadata files failing to decode (it logs and goes on); we do not."""
    items = [p for p in step_dir.iterdir() if p.is_dir()]
    files = [step_dir / name for name in _ORBAX_JSON_FILES] + [item / name for item in items for name in _ORBAX_JSON_FILES]
    files += [p for item in items if (item / "array_metadatas").is_dir() for p in (item / "array_metadatas").iterdir()]
    for path in files:
        if path.is_file():
            try:
                json.loads(path.read_bytes())
            except ValueError as e:
                raise _Undecodable(f"{path.relative_to(step_dir)} does not decode ({e})") from None


def _read_item_json(step_dir: epath.Path, item: str) -> dict[str, Any]:
    # JsonSave writes the item as ITEM/metadata
    return json.loads((step_dir / item / "metadata").read_bytes())


def _cast_like(tree: PyTree, abstract: PyTree) -> PyTree:
    return jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype), tree, abstract)


def _set_aside_torn_steps(directory: epath.Path) -> None:
    """Renames step directories that orbax would take as committed but that lack the commit marker."""
    for path in directory.iterdir():
        if path.name.isdigit() and path.is_dir() and not is_complete_step(path):
            target = _free_name(path, INCOMPLETE_SUFFIX)
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
    return {fingerprints.leaf_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


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


# --- params-only export and warm start --------------------------------------------------------


def export_params(
    params: PyTree, out_dir: str | epath.PathLike, dtype: Any = jnp.bfloat16, overwrite: bool = False
) -> epath.Path:
    """Writes a params-only checkpoint, floating arrays cast to `dtype` (None: as they are), with
    their fingerprints beside it (EXPORT_FINGERPRINTS), which restore_params checks."""
    out_dir = run_path(out_dir)  # orbax takes absolute paths only
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; choose a new export directory or pass overwrite=True")
    if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    record = fingerprints.make_record(params, {})
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(out_dir, args=ocp.args.StandardSave(params), force=overwrite)
    if jax.process_index() == 0:
        (out_dir / EXPORT_FINGERPRINTS).write_text(json.dumps(record))
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

    def refuse(reason: str) -> CorruptCheckpoint:  # eval, export and warm starts never move files
        return CorruptCheckpoint(path, reason, None)

    params, record, prefix = _agreed(lambda: _read_params(path, abstract_params), refuse)
    if record is not None:
        _agreed(lambda: fingerprints.verify(params, record, prefix), refuse)
    return _cast_like(params, abstract_params)


def _read_params(path: epath.Path, abstract_params: PyTree) -> tuple[PyTree, dict[str, Any] | None, str]:
    """This process's read of the params: (params in the saved dtypes, fingerprint record, the
    record's key prefix)."""
    _check_json_files(path)
    if not (path / STATE_ITEM).is_dir():
        _check_matches_saved(path, abstract_params, f"params checkpoint {path}")
        record = None
        if (path / EXPORT_FINGERPRINTS).is_file():  # exports written before fingerprints: unchecked
            record = json.loads((path / EXPORT_FINGERPRINTS).read_bytes())
        wanted = fingerprints.as_saved_dtypes(abstract_params, record)
        return _restore_item(ocp.StandardCheckpointHandler(), path, ocp.args.StandardRestore(wanted)), record, ""
    # A training step: read only the params subtree of its train state.
    saved = _saved_tree(path / STATE_ITEM)
    if PARAMS_KEY not in saved:
        raise UserError(f"the train state in {path} has no {PARAMS_KEY!r}; pass an export_params directory")
    _compare_shapes(_leaf_shapes(saved[PARAMS_KEY]), _leaf_shapes(abstract_params), f"params of {path}")
    record = None
    if (path / FINGERPRINT_ITEM).is_dir():  # steps saved before fingerprints: unchecked
        record = _read_item_json(path, FINGERPRINT_ITEM)
    prefix = f"{PARAMS_KEY}/"
    wanted = {PARAMS_KEY: fingerprints.as_saved_dtypes(abstract_params, record, prefix)}
    restored = _restore_item(ocp.PyTreeCheckpointHandler(), path / STATE_ITEM, ocp.args.PyTreeRestore(
        item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted), partial_restore=True))
    return restored[PARAMS_KEY], record, prefix
