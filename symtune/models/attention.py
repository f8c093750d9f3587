"""Multi-head attention with grouped-query heads, RoPE, packed/prefix-LM masks and a KV cache."""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd

from symtune.errors import UserError
from symtune.models import cpu_attention
from symtune.models.config import DecoderConfig
from symtune.models.kernels import cudnn, splash
from symtune.models.layers import add_bias, apply_rope, constrain, dot, einsum_f32, param
from symtune.models.platform import compute_platform

NEG_INF = float(jnp.finfo(jnp.float32).min)


class KVCache(NamedTuple):
    """Keys and values of every layer for decoding; slot i holds the i-th token fed to the model.

    k, v: [layers, batch, slots, kv_heads, head_dim]; valid: [batch, slots] (False on padding and
    on slots not yet written); index: int32 scalar, the next slot to write.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array


def attention_mask(
    segment_ids: jax.Array | None, prefix_mask: jax.Array | None, batch: int, length: int
) -> jax.Array:
    """bool [B, T, T]: causal, within a packed segment (0 = padding), bidirectional on the prefix."""
    idx = jnp.arange(length)
    allowed = (idx[None, :] <= idx[:, None])[None]
    if prefix_mask is not None:
        allowed = allowed | (prefix_mask[:, :, None] & prefix_mask[:, None, :])
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        allowed = allowed & same & (segment_ids != 0)[:, None, :]
    return jnp.broadcast_to(allowed, (batch, length, length))


def cache_mask(valid: jax.Array, index: jax.Array, length: int) -> jax.Array:
    """bool [B, T, S] for T new tokens written at slots index..index+T-1 of a cache with `valid`."""
    slots = jnp.arange(valid.shape[1])
    query_slot = index + jnp.arange(length)
    return (slots[None, :] <= query_slot[:, None])[None] & valid[:, None, :]


def attention_kernel(impl: str, q_shape: tuple, k_shape: tuple, *, causal: bool, dtype) -> str:
    """The attention that `attend` runs: DecoderConfig.attention resolved for the compute platform.

    "auto": Pallas splash attention on TPU, cuDNN flash attention on GPU (bfloat16/float16), the
    fused C++ kernel on one CPU device in float32, XLA's einsums otherwise; on TPU, rows with a
    bidirectional prefix (`causal` False) take XLA's, as splash's static masks cannot express
    them (cuDNN takes them exactly, through its mask). "splash", "cudnn" and "xla" are taken as
    asked: a UserError where the kernel cannot run (another platform, or shapes it does not take)."""
    platform = compute_platform()
    if impl in ("splash", "cudnn"):
        home = "tpu" if impl == "splash" else "gpu"
        problem = None if platform == home else f"it runs on {home.upper()}s only, and this step compiles for {platform}"
        if impl == "splash":
            problem = problem or ("rows with a bidirectional prefix (PrefixLM) need XLA's attention" if not causal
                                  else splash.splash_supported(q_shape, k_shape))
        else:
            problem = problem or cudnn.cudnn_supported(q_shape, k_shape, dtype)
        if problem:
            raise UserError(f"DecoderConfig.attention='{impl}': {problem}; use attention='auto' or 'xla'")
        return impl
    if impl == "auto":
        if platform == "tpu" and splash.splash_supported(q_shape, k_shape) is None:
            if causal:
                return "splash"
            _say_once("rows with a bidirectional prefix (PrefixLM) take XLA's attention on TPU: splash "
                      "attention's masks are fixed when the step compiles")
        if platform == "gpu":
            problem = cudnn.cudnn_supported(q_shape, k_shape, dtype)
            if problem is None:
                return "cudnn"
            _say_once(f"XLA's attention on GPU: {problem}")
        if platform == "cpu" and cpu_attention.applies_to(q_shape, dtype):
            return "cpu"
    return "xla"


@functools.cache
def _say_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, causal: bool, block: int,
           impl: str, segment_ids: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v: q [B, T, H, D], k/v [B, S, K, D], mask bool [B, T, S] -> [B, T, H, D].

    `impl` is DecoderConfig.attention, resolved by `attention_kernel`; splash reads `segment_ids`
    (the packing the mask was built from) instead of the mask. XLA's einsums: with `causal`,
    queries go in blocks of `block` (DecoderConfig.causal_block), each scoring only the keys up to
    its end (the keys skipped are masked for it anyway).
    """
    kernel = attention_kernel(impl, q.shape, k.shape, causal=causal, dtype=q.dtype)
    if kernel == "splash":
        rules = dict(spmd.get_logical_axis_rules() or ())
        return splash.sharded_splash_attention(q, k, v, segment_ids, batch_axes=rules.get("act_batch"),
                                               head_axes=rules.get("act_heads"))
    if kernel == "cudnn":
        return cudnn.cudnn_attention(q, k, v, mask, causal=causal)
    if kernel == "cpu":
        return cpu_attention.fused_attention(q, k, v, mask)
    t, s = q.shape[1], k.shape[1]
    if not causal or t != s or t <= block:
        return _attend_block(q, k, v, mask)
    n = block
    return jnp.concatenate([_attend_block(q[:, i:i + n], k[:, :i + n], v[:, :i + n], mask[:, i:i + n, :i + n])
                            for i in range(0, t, n)], axis=1)


def score_elements(length: int, causal: bool, block: int) -> int:
    """Entries of one head's score matrix in `attend` over `length` tokens (key blocks skipped included)."""
    if not causal or length <= block:
        return length * length
    return sum(min(block, length - i) * min(i + block, length) for i in range(0, length, block))


def _attend_block(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    # The G query heads sharing a kv head are folded into the query axis: every matmul and the
    # softmax then run on 4-D [B, K, G*T, S] arrays, which XLA:CPU handles far faster than 5-D.
    (b, t, h, d), s = q.shape, k.shape[1]
    kv_heads, dtype = k.shape[2], q.dtype
    groups = h // kv_heads
    q = q * jnp.asarray(d ** -0.5, dtype)
    q = q.reshape(b, t, kv_heads, groups, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, d)
    mask = jnp.broadcast_to(mask[:, None, None], (b, 1, groups, t, s)).reshape(b, 1, groups * t, s)
    scores = einsum_f32("bkqd,bskd->bkqs", q, k, out_dtype=jnp.float32)
    probs = masked_softmax(scores, mask).astype(dtype)
    out = einsum_f32("bkqs,bskd->bkqd", probs, v)
    return out.reshape(b, kv_heads, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


@jax.custom_jvp
def masked_softmax(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis where mask holds, whose backward keeps only the output."""
    return jax.nn.softmax(jnp.where(mask, x, NEG_INF), axis=-1)


@masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
    # Needs only y; jax.nn.softmax's own derivative also keeps the masked input and exp(x).
    x, mask = primals
    t = tangents[0]
    y = masked_softmax(x, mask)
    return y, y * (t - jnp.sum(y * t, axis=-1, keepdims=True))


class Attention(nnx.Module):
    """Self-attention: q/k/v/o projections with per-head logical axes; kv_heads < heads is GQA."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, pdtype = config, jnp.dtype(config.param_dtype)
        init = nnx.initializers.normal(c.init_std)
        out_init = nnx.initializers.normal(c.init_std / math.sqrt(2 * c.num_layers))
        zeros = nnx.initializers.zeros
        self.q = param(rngs, init, (c.embed_dim, c.num_heads, c.head_dim), ("embed", "heads", "kv"), pdtype)
        self.k = param(rngs, init, (c.embed_dim, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "kv"), pdtype)
        self.v = param(rngs, init, (c.embed_dim, c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "kv"), pdtype)
        self.o = param(rngs, out_init, (c.num_heads, c.head_dim, c.embed_dim), ("heads", "kv", "embed"), pdtype)
        if c.qkv_bias:
            self.q_bias = param(rngs, zeros, (c.num_heads, c.head_dim), ("heads", "kv"), pdtype)
            self.k_bias = param(rngs, zeros, (c.num_kv_heads, c.head_dim), ("kv_heads", "kv"), pdtype)
            self.v_bias = param(rngs, zeros, (c.num_kv_heads, c.head_dim), ("kv_heads", "kv"), pdtype)
        if c.out_bias:
            self.o_bias = param(rngs, zeros, (c.embed_dim,), ("embed",), pdtype)

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        dtype = jnp.dtype(self.config.dtype)
        y = dot(x, getattr(self, name).get_value(), "btd,dhk->bthk", dtype)
        if self.config.qkv_bias:
            y = add_bias(y, getattr(self, f"{name}_bias"))
        return constrain(y, ("act_batch", "act_len", "act_heads", "act_kv"))

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None,
        cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
        causal: bool = False,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [B, T, D], mask bool [B, T, S] -> ([B, T, D], this layer's updated (k, v) cache or None).

        With `cache = (k, v, index)` the new keys/values are written at `index` and the queries
        attend over all S cache slots; otherwise S = T. `causal` promises that the mask allows no
        key after its query (no bidirectional prefix), so blocks above the diagonal are skipped.
        `segment_ids` [B, T] are the packing the mask was built from (for kernels that take them).
        """
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        q, k, v = self._project(x, "q"), self._project(x, "k"), self._project(x, "v")
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        new_cache = None
        if cache is not None:
            cache_k, cache_v, index = cache
            k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype), index, axis=1)
            new_cache = (k, v)
            k, v = k.astype(dtype), v.astype(dtype)
        # Decoding through a cache takes XLA's attention: the kernels serve whole rows (training, scoring).
        out = attend(q, k, v, mask, causal=causal and cache is None, block=c.causal_block,
                     impl=c.attention if cache is None else "xla", segment_ids=segment_ids if cache is None else None)
        out = constrain(out, ("act_batch", "act_len", "act_heads", "act_kv"))
        y = dot(out, self.o.get_value(), "bthk,hkd->btd", dtype)
        if c.out_bias:
            y = add_bias(y, self.o_bias)
        return y, new_cache
