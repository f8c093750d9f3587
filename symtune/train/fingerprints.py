"""Checkpoint fingerprints: a few uint32 per array, computed on device over the array's bits
where it lives (no copy to the host, no second read of the files), to tell whether what a restore
read is what was saved."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class Mismatch(ValueError):
    """What a restore read differs from what was saved."""


def leaf_name(path) -> str:
    """A leaf's path string, the same for a namedtuple and for its saved dict form."""

    def name(key) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return "/".join(name(k) for k in path)


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bits as a flat uint32 vector (narrower types widened, wider split)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).reshape(-1)
    size = x.dtype.itemsize
    if size >= 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    narrow = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32).reshape(-1)


def _mix(h: jax.Array) -> jax.Array:
    # murmur3's finaliser: every input bit affects every output bit, so errors cannot cancel in a sum
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _fingerprint(x: jax.Array) -> jax.Array:
    w = _as_words(x)
    i = jnp.arange(w.shape[0], dtype=jnp.uint32)
    return jnp.stack([
        jnp.sum(w, dtype=jnp.uint32),
        jnp.sum(w * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32),  # position-weighted
        jnp.sum(_mix(w ^ _mix(i + jnp.uint32(0x9E3779B9))), dtype=jnp.uint32),
    ])


def _replicated(tree: PyTree):
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


def fingerprints(tree: PyTree) -> dict[str, list[int]]:
    """{leaf path: [3 x uint32]} of the global arrays, computed by one jit where they live; every
    process gets the same values (the result is replicated)."""
    named = jax.tree_util.tree_leaves_with_path(tree)
    if not named:
        return {}
    leaves = [leaf for _, leaf in named]
    # One array out, replicated, so each process can read it whatever the arrays' shardings.
    stacked = jax.jit(lambda xs: jnp.stack([_fingerprint(x) for x in xs]), out_shardings=_replicated(leaves))(leaves)
    values = np.asarray(stacked).tolist()
    return {leaf_name(path): value for (path, _), value in zip(named, values)}


def _data_digest(data_state: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def make_record(train_state: PyTree, data_state: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint step stores to verify its restore: each array's dtype, shape and
    fingerprint, and a digest of the data state."""
    prints = fingerprints(train_state)
    arrays = {
        leaf_name(path): {"dtype": str(jnp.asarray(leaf).dtype), "shape": list(np.shape(leaf)), "fingerprint": prints[leaf_name(path)]}
        for path, leaf in jax.tree_util.tree_leaves_with_path(train_state)
    }
    return {"version": 1, "arrays": arrays, "data": _data_digest(data_state)}


def as_saved_dtypes(abstract: PyTree, record: Mapping[str, Any] | None, prefix: str = "") -> PyTree:
    """The restore target with each leaf in its saved dtype, so fingerprints compare bit for bit."""
    if record is None:
        return abstract
    arrays = record["arrays"]

    def saved(path, leaf):
        entry = arrays.get(prefix + leaf_name(path))
        if entry is None or np.dtype(entry["dtype"]) == np.dtype(leaf.dtype):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, np.dtype(entry["dtype"]), sharding=leaf.sharding)

    return jax.tree_util.tree_map_with_path(saved, abstract)


def verify(tree: PyTree, record: Mapping[str, Any], prefix: str = "",
           data_state: Mapping[str, Any] | None = None) -> None:
    """Mismatch naming the first array (under `prefix` in the record) whose restored bits differ
    from its save-time fingerprint, or saying that the data state differs."""
    if data_state is not None and record.get("data") != _data_digest(data_state):
        raise Mismatch("the data state differs from what was saved")
    arrays = record["arrays"]
    got = fingerprints(tree)
    for name, value in got.items():
        entry = arrays.get(prefix + name)
        if entry is None:
            raise Mismatch(f"array {prefix + name} has no saved fingerprint")
        if value != entry["fingerprint"]:
            raise Mismatch(f"array {prefix + name} differs from what was saved (fingerprint mismatch)")
