"""Causal, segment-aware attention on TPU with the Pallas splash kernel that ships with JAX.

`splash_attention` takes the decoder's [B, T, H, D] layout with grouped-query keys and values
[B, S, K, D] and packed-row segment ids, and runs jax's `splash_attention` kernel per example
(vmapped over the batch). The kernel skips key blocks that the causal mask rules out, so it does
about half the work of dense attention and never holds a [T, S] score array; its custom VJP
recomputes scores blockwise in the backward pass. `interpret=True` runs the same kernel through
the Pallas interpreter on any backend (slow; for tests). `splash_supported` says beforehand
whether a shape can be run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SplashAttentionKernel

LANES = 128  # TPU lane width: the kernel tiles both sequence axes in multiples of it


def splash_supported(q_shape: Sequence[int], k_shape: Sequence[int]) -> str | None:
    """None when q [B, T, H, D] and k/v [B, S, K, D] can run through `splash_attention`, else why not."""
    if len(q_shape) != 4 or len(k_shape) != 4:
        return f"splash needs q [B, T, H, D] and k/v [B, S, K, D], got {tuple(q_shape)} and {tuple(k_shape)}"
    batch, length, heads, head_dim = q_shape
    kv_batch, kv_length, kv_heads, kv_head_dim = k_shape
    if kv_batch != batch:
        return f"q and k/v batch sizes differ ({batch} vs {kv_batch})"
    if length % LANES:
        return f"splash needs sequence lengths that are multiples of {LANES}, got {length}"
    if kv_length != length:
        return f"causal splash attention here needs as many keys as queries, got T={length}, S={kv_length}"
    if kv_heads < 1 or heads % kv_heads:
        return f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})"
    if kv_head_dim != head_dim:
        return f"q and k head widths differ ({head_dim} vs {kv_head_dim})"
    return None


def block_size(length: int, block: int) -> int:
    """The largest power of two that divides `length`, is at most `block` and at least 128."""
    if length % LANES:
        raise ValueError(f"splash needs sequence lengths that are multiples of {LANES}, got {length}")
    size = LANES
    while size * 2 <= block and length % (size * 2) == 0:
        size *= 2
    return size


def _kernel(heads: int, length: int, block: int, interpret: bool) -> SplashAttentionKernel:
    # Built per trace: the kernel holds the mask's block metadata as arrays, which become constants
    # of the trace (cached across traces they would be its tracers, or arrays placed on a mesh's
    # devices, which a deviceless compile for a TPU target cannot create).
    mask = splash.MultiHeadMask(tuple(splash.CausalMask((length, length)) for _ in range(heads)))
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    return splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    *,
    interpret: bool = False,
    block: int = 512,
) -> jax.Array:
    """Causal attention within packed segments: q [B, T, H, D], k/v [B, T, K, D] -> [B, T, H, D].

    H must be a multiple of K; each group of H/K query heads shares one key/value head.
    segment_ids int32 [B, T] (0 = padding) or None for one sequence per row. Scores are scaled by
    1/sqrt(D). Rows of padding queries attend among padding keys: finite, but meaningless.
    `block` bounds the kernel's query/key tile (see `block_size`).
    """
    reason = splash_supported(q.shape, k.shape)
    if reason is None and v.shape[:3] != k.shape[:3]:
        reason = f"k {k.shape} and v {v.shape} differ in batch, length or heads"
    if reason is not None:
        raise ValueError(reason)
    batch, length, heads, head_dim = q.shape
    kernel = _kernel(heads, length, block_size(length, block), interpret)

    # The kernel does not scale scores; scaling q is T*D multiplies instead of T*S.
    scale = 1.0 / math.sqrt(head_dim)
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    # Head-major per example. With K < H the kernel maps query head h to kv head h // (H/K) itself,
    # so grouped k/v are never repeated, and its backward sums dk/dv over each group in-kernel.
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k.astype(q.dtype), v.astype(q.dtype)))
    if segment_ids is None:
        out = jax.vmap(kernel)(q, k, v)
    else:
        if segment_ids.shape != (batch, length):
            raise ValueError(f"segment_ids must be [B, T] = {(batch, length)}, got {segment_ids.shape}")
        segment_ids = segment_ids.astype(jnp.int32)
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(q=s, kv=s)))(q, k, v, segment_ids)
    return out.transpose(0, 2, 1, 3)


def sharded_splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
                             *, batch_axes, head_axes, block: int = 512) -> jax.Array:
    """`splash_attention` on the current mesh: a Pallas kernel is not partitioned by XLA, so each
    device runs it on its own rows (split over `batch_axes`) and heads (over `head_axes`)."""
    from jax.sharding import PartitionSpec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return splash_attention(q, k, v, segment_ids, block=block)
    spec = PartitionSpec(batch_axes, None, head_axes, None)
    rows = PartitionSpec(batch_axes, None)

    def local(q, k, v, segment_ids):
        return splash_attention(q, k, v, segment_ids, block=block)

    if segment_ids is None:
        return jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh, in_specs=(spec, spec, spec),
                             out_specs=spec, check_vma=False)(q, k, v)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, rows), out_specs=spec,
                         check_vma=False)(q, k, v, segment_ids)
