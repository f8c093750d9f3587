"""Decoder building blocks: sharded parameters, activation constraints, norms, embeddings, MLP, RoPE."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from symtune.models.config import DecoderConfig
from symtune.models.platform import compute_platform

Axes = tuple[str | None, ...]


def mesh_is_set() -> bool:
    """True inside `jax.set_mesh(...)`: parameters are then created sharded by the logical rules."""
    return not jax.sharding.get_abstract_mesh().empty


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes, dtype) -> nnx.Param:
    """A parameter whose dimensions carry logical axis names (placed by the rules inside a mesh)."""
    return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), tuple(shape), dtype))


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Activation sharding constraint by logical axis names; a no-op outside a mesh or rules context."""
    rules = spmd.get_logical_axis_rules()
    if not rules or not mesh_is_set():
        return x
    table = dict(rules)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*(table.get(a) if a else None for a in axes)))


DOT_NAME = "dot"  # checkpoint name of every `dot` output, for remat policies


def dot(x: jax.Array, w: jax.Array, spec: str, dtype, out_dtype=None) -> jax.Array:
    """einsum of an activation with a parameter cast to the compute dtype.

    On the CPU its backward is `_dot`'s, written around XLA:CPU's dot library; TPUs and GPUs take
    plain autodiff (on v5p the two compile to the same memory, see the README)."""
    x, w, out_dtype = x.astype(dtype), w.astype(dtype), jnp.dtype(out_dtype or dtype)
    y = _dot(x, w, spec, out_dtype) if compute_platform() == "cpu" else einsum_f32(spec, x, w, out_dtype=out_dtype)
    return checkpoint_name(y, DOT_NAME)


def einsum_f32(spec: str, *operands: jax.Array, out_dtype=None) -> jax.Array:
    """einsum accumulated and returned in float32, then cast to out_dtype (default: the operands').

    The same numbers as asking for a bfloat16 result (accelerators accumulate in float32), but
    XLA:CPU runs a bf16 x bf16 -> f32 dot on its bf16 matrix units, while for a bf16 result it
    converts both operands to f32 first.
    """
    y = jnp.einsum(spec, *operands, preferred_element_type=jnp.float32)
    return y.astype(out_dtype or jnp.result_type(*operands))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot(x: jax.Array, w: jax.Array, spec: str, out_dtype) -> jax.Array:
    return einsum_f32(spec, x, w, out_dtype=out_dtype)


def _dot_fwd(x, w, spec, out_dtype):
    return _dot(x, w, spec, out_dtype), (x, w)


def _dot_bwd(spec, out_dtype, residuals, g):
    # Autodiff computes the weight gradient as dot(g, x) then a transpose, which XLA:CPU lowers to a
    # copy of all of g transposed (206 MB for a 50K vocabulary at 1K tokens) feeding a slow dot.
    # Contracting x first moves only x (transposed for the fast matmul kernel); when x is the wider
    # operand (the MLP output projection) a 2-D token contraction needs no copy at all.
    x, w = residuals
    inputs, out = spec.split("->")
    xs, ws = inputs.split(",")
    natural = "".join([c for c in xs if c in ws] + [c for c in out if c in ws and c not in xs])
    g = g.astype(x.dtype)
    dx = einsum_f32(f"{out},{ws}->{xs}", g, w, out_dtype=x.dtype)
    lead = sum(c not in ws for c in xs)  # the token dims, contracted for dw
    if xs[:lead] == out[:lead] and x.size > g.size:
        n = math.prod(x.shape[:lead])
        dw = jax.lax.dot_general(x.reshape(n, -1), g.reshape(n, -1), (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        dw = dw.astype(w.dtype).reshape([*x.shape[lead:], *g.shape[lead:]])
    else:
        dw = einsum_f32(f"{xs},{out}->{natural}", x, g, out_dtype=w.dtype)
    return dx, jnp.transpose(dw, [natural.index(c) for c in ws])


_dot.defvjp(_dot_fwd, _dot_bwd)


def add_bias(y: jax.Array, bias: nnx.Param) -> jax.Array:
    """y + bias, added in float32 and returned in y's dtype.

    Its gradient for the bias is then a float32 sum over every token: in bfloat16 that sum loses
    the bias updates' low bits (and XLA:CPU splits a bf16 sum into slow reduce-window passes).
    """
    return (y.astype(jnp.float32) + bias.get_value().astype(jnp.float32)).astype(y.dtype)


def _normalize(x, centered, eps):
    x = x - x.mean(-1, keepdims=True) if centered else x
    rstd = jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * rstd, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def normalize(x: jax.Array, centered: bool, eps: float) -> jax.Array:
    """(x - mean) / std over the last axis (RMS if not centered); its backward keeps y and 1/std only."""
    return _normalize(x, centered, eps)[0]


@normalize.defjvp
def _normalize_jvp(centered, eps, primals, tangents):
    (x,), (t,) = primals, tangents
    y, rstd = _normalize(x, centered, eps)
    t = t - t.mean(-1, keepdims=True) if centered else t
    return y, rstd * (t - y * (y * t).mean(-1, keepdims=True))


class Norm(nnx.Module):
    """RMSNorm (scale only) or LayerNorm (scale and bias), computed in float32."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.kind = config.norm
        self.eps = config.norm_eps
        self.dtype = jnp.dtype(config.dtype)
        pdtype = jnp.dtype(config.param_dtype)
        self.scale = param(rngs, nnx.initializers.ones, (config.embed_dim,), ("norm",), pdtype)
        if self.kind == "layernorm":
            self.bias = param(rngs, nnx.initializers.zeros, (config.embed_dim,), ("norm",), pdtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.bias.get_value() if self.kind == "layernorm" else None
        return _norm(x, self.scale.get_value(), bias, self.eps, self.dtype)


@functools.partial(jax.checkpoint, static_argnums=(3, 4))
def _norm(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float, dtype) -> jax.Array:
    """Norm's float32 computation, rematerialised: the backward pass keeps x in its own dtype, not
    the float32 normalised copy (llama-3-8b on v5p: 40 -> 20 MB per norm per 2,560-token row)."""
    y = normalize(x.astype(jnp.float32), bias is not None, eps) * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


class Embed(nnx.Module):
    """A [vocab, embed] table: looks tokens up, and as a tied head maps hidden states to logits."""

    def __init__(self, num: int, config: DecoderConfig, axes: Axes, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(config.dtype)
        self.axes = axes
        init = nnx.initializers.normal(config.init_std)
        self.embedding = param(rngs, init, (num, config.embed_dim), axes, jnp.dtype(config.param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding.get_value().astype(self.dtype)
        return constrain(jnp.take(table, ids, axis=0), ("act_batch", "act_len", "act_embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the table (tied embeddings), in float32."""
        return dot(x, self.embedding.get_value(), "btd,vd->btv", self.dtype, jnp.float32)


def activation(name: str, x: jax.Array) -> jax.Array:
    """silu, exact gelu (GPT-NeoX) or tanh-approximated gelu (GPT-2's gelu_new)."""
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return gelu_exact(x)
    return gelu_tanh(x)


def keeps_slope(value_and_slope):
    """The elementwise function x -> value_and_slope(x)[0], whose backward keeps one array, the slope.

    Autodiff of the same formula would keep every intermediate (four arrays for GELU); under jit
    the slope of a forward-only call is dead code and dropped.
    """

    @jax.custom_jvp
    def f(x: jax.Array) -> jax.Array:
        return value_and_slope(x)[0]

    @f.defjvp
    def _jvp(primals, tangents):
        value, slope = value_and_slope(primals[0])
        return value, slope * tangents[0]

    return f


@keeps_slope
def gelu_exact(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GELU with the normal CDF (GPT-NeoX's gelu), as jax.nn.gelu(approximate=False)."""
    # erf, as torch's gelu: XLA:CPU expands erfc into three passes with exp and a division (3x the
    # time); for x << 0 the CDF is then absolute- rather than relative-accurate (~1e-7).
    cdf = 0.5 + 0.5 * jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype))
    pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
    return x * cdf, cdf + x * pdf


@keeps_slope
def gelu_tanh(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GELU with the tanh approximation (GPT-2's gelu_new), as jax.nn.gelu(approximate=True)."""
    c, a = np.sqrt(2 / np.pi).astype(x.dtype), np.asarray(0.044715, x.dtype)
    th = jnp.tanh(c * (x + a * x * x * x))
    half = 0.5 * (1 + th)
    return x * half, half + 0.5 * x * (1 - th * th) * c * (1 + 3 * a * x * x)


class Mlp(nnx.Module):
    """Feed-forward block: gated (SwiGLU) or plain two-layer, with optional biases."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, m, pdtype = config.embed_dim, config.mlp_dim, jnp.dtype(config.param_dtype)
        init = nnx.initializers.normal(config.init_std)
        out_init = nnx.initializers.normal(config.init_std / math.sqrt(2 * config.num_layers))
        self.wi = param(rngs, init, (d, m), ("embed", "mlp"), pdtype)
        if config.gated_mlp:
            self.wi_gate = param(rngs, init, (d, m), ("embed", "mlp"), pdtype)
        self.wo = param(rngs, out_init, (m, d), ("mlp", "embed"), pdtype)
        if config.mlp_bias:
            self.wi_bias = param(rngs, nnx.initializers.zeros, (m,), ("mlp",), pdtype)
            if config.gated_mlp:
                self.wi_gate_bias = param(rngs, nnx.initializers.zeros, (m,), ("mlp",), pdtype)
            self.wo_bias = param(rngs, nnx.initializers.zeros, (d,), ("embed",), pdtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        h = dot(x, self.wi.get_value(), "btd,dm->btm", dtype)
        if c.mlp_bias:
            h = add_bias(h, self.wi_bias)
        gate = None
        if c.gated_mlp:
            gate = dot(x, self.wi_gate.get_value(), "btd,dm->btm", dtype)
            if c.mlp_bias:
                gate = add_bias(gate, self.wi_gate_bias)
        y = _mlp_out(c.activation, dtype, h, gate, self.wo.get_value())
        if c.mlp_bias:
            y = add_bias(y, self.wo_bias)
        return y


@functools.partial(jax.checkpoint, static_argnums=(0, 1))
def _mlp_out(name: str, dtype, h: jax.Array, gate: jax.Array | None, wo: jax.Array) -> jax.Array:
    """activation(gate) * h (or activation(h)) through the output projection.

    Rematerialised: the backward pass keeps only the input projections' outputs and recomputes
    the elementwise activation, which otherwise keeps up to four more [tokens, mlp] arrays per
    layer (llama-3-8b, one 2,560-token row on v5p: 420 -> 140 MB per layer in the TPU compiler).
    """
    h = activation(name, h) if gate is None else activation(name, gate) * h
    h = constrain(h, ("act_batch", "act_len", "act_mlp"))
    return dot(h, wo, "btm,md->btd", dtype)


def rope_inverse_frequencies(config: DecoderConfig) -> np.ndarray:
    """Inverse frequencies of the rotary dims (float32), with Llama-3 scaling when configured."""
    dim = config.rotary_dim
    inv = 1.0 / (np.float32(config.rope_base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    if config.rope_llama3_factor is None:
        return inv.astype(np.float32)
    # Llama 3.1 scaling: long wavelengths divided by `factor`, short ones kept, smooth in between.
    factor, low, high = config.rope_llama3_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    old = config.rope_original_max_positions
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_angles(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, rotary_dim/2] of each position, in float32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the leading 2*len(cos) dims of x [B, T, H, D] (rotate-half layout, as in HF)."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1f, x2f = x1.astype(jnp.float32), x2.astype(jnp.float32)
    rotated = jnp.concatenate([x1f * cos - x2f * sin, x2f * cos + x1f * sin], axis=-1).astype(x.dtype)
    return jnp.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when key is None or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
