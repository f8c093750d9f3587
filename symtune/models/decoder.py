"""The decoder-only Transformer: a scanned stack of pre-norm blocks, with token embedding and LM head.

`DecoderStack` (positions → blocks → final norm) works on embeddings, so a head that brings its
own input projection and readout (TART) reuses it; `Decoder` adds the token embedding and the LM
head. Parameters of the scanned blocks have a leading `layers` axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from symtune.models.attention import Attention, KVCache, attention_mask, cache_mask
from symtune.models.config import DecoderConfig
from symtune.models.layers import (
    DOT_NAME, Embed, Mlp, Norm, constrain, dot, dropout, mesh_is_set, param, rope_angles,
    rope_inverse_frequencies,
)

__all__ = ["Block", "Decoder", "DecoderConfig", "DecoderStack", "KVCache"]

_cp = jax.checkpoint_policies
# Projections are custom-vjp `dot`s, opaque to the dot policies: they are found by name.
REMAT_POLICIES = {
    "save_nothing": _cp.nothing_saveable,
    "save_projections": _cp.save_only_these_names(DOT_NAME),  # every `dot`: the weight matmuls
}
_LAYERS = {nnx.PARTITION_NAME: "layers"}
_ACT = ("act_batch", "act_len", "act_embed")


class Block(nnx.Module):
    """One pre-norm Transformer block: sequential (Llama, GPT-2) or parallel (GPT-NeoX) residual."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.attn_norm = Norm(config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = Norm(config, rngs=rngs)
        self.mlp = Mlp(config, rngs=rngs)

    def __call__(self, x, mask, rope, key=None, cache=None, causal=False, segment_ids=None):
        """x [B, T, D] -> (x, updated (k, v) of this layer or None); `causal`, `segment_ids` as in Attention."""
        rate = self.config.dropout_rate
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        attn, new_cache = self.attn(self.attn_norm(x), mask, rope, cache, causal, segment_ids)
        attn = dropout(attn, rate, keys[0])
        if self.config.parallel_residual:
            x = x + attn + dropout(self.mlp(self.mlp_norm(x)), rate, keys[1])
        else:
            x = x + attn
            x = x + dropout(self.mlp(self.mlp_norm(x)), rate, keys[1])
        return constrain(x, _ACT), new_cache


class DecoderStack(nnx.Module):
    """Learned positions (if configured), the scanned blocks and the final norm, over embeddings."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        with nnx.use_eager_sharding(mesh_is_set()):
            if config.position == "learned":
                self.pos_embed = Embed(config.max_positions, config, (None, "embed"), rngs=rngs)

            @nnx.split_rngs(splits=config.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYERS)
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(config, rngs=rngs)

            self.layers = make_blocks(rngs)
            self.final_norm = Norm(config, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        cache: KVCache | None = None,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """x [B, T, D] embeddings -> (final-norm hidden states [B, T, D], updated cache or None).

        Without a cache the mask comes from segment_ids / prefix_mask; with one, the T tokens are
        written at `cache.index` (token_mask False marks padding) and attend to all valid slots.
        """
        c = self.config
        b, t = x.shape[:2]
        start = 0 if cache is None else cache.index
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(t), (b, t))
        x = x.astype(jnp.dtype(c.dtype))
        if c.position == "learned":
            x = x + self.pos_embed(positions)
        rope = rope_angles(positions, rope_inverse_frequencies(c)) if c.position == "rope" else None
        if cache is None:
            mask = attention_mask(segment_ids, prefix_mask, b, t)
        else:
            valid = jnp.ones((b, t), bool) if token_mask is None else token_mask.astype(bool)
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, cache.index, axis=1)
            mask = cache_mask(valid, cache.index, t)
        keys = None
        if dropout_key is not None and c.dropout_rate > 0:
            embed_key, layers_key = jax.random.split(dropout_key)
            x = dropout(x, c.dropout_rate, embed_key)
            keys = jax.random.split(layers_key, c.num_layers)
        x = constrain(x, _ACT)
        layer_caches = None if cache is None else (cache.k, cache.v)

        def body(x, block, layer_cache, key):
            kv = None if layer_cache is None else (*layer_cache, cache.index)
            return block(x, mask, rope, key, kv, causal=cache is None and prefix_mask is None, segment_ids=segment_ids)

        if c.remat_policy != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=False)
        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0, 0, 0),
            out_axes=(nnx.Carry, 0),
            transform_metadata=_LAYERS,
            unroll=1 if c.scan_layers else True,
        )
        x, new_caches = scan(x, self.layers, layer_caches, keys)
        h = self.final_norm(x)
        if cache is None:
            return h, None
        return h, KVCache(new_caches[0], new_caches[1], valid, cache.index + t)


class Decoder(nnx.Module):
    """Token embedding → DecoderStack → LM head (tied to the embedding or its own [embed, vocab])."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        with nnx.use_eager_sharding(mesh_is_set()):
            self.embed = Embed(config.vocab_size, config, ("vocab", "embed"), rngs=rngs)
            self.stack = DecoderStack(config, rngs=rngs)
            if not config.tie_embeddings:
                init = nnx.initializers.normal(config.init_std)
                self.lm_head = param(rngs, init, (config.embed_dim, config.vocab_size), ("embed", "vocab"),
                                     jnp.dtype(config.param_dtype))

    def _embed(self, tokens, inputs_embeds):
        if (tokens is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of tokens and inputs_embeds")
        return self.embed(tokens) if inputs_embeds is None else inputs_embeds

    @staticmethod
    def _dropout_key(deterministic: bool, dropout_key: jax.Array | None) -> jax.Array | None:
        if not deterministic and dropout_key is None:
            raise ValueError("deterministic=False needs a dropout_key")
        return None if deterministic else dropout_key

    def _final(self, tokens, inputs_embeds, positions, segment_ids, prefix_mask, deterministic,
               dropout_key) -> jax.Array:
        """The stack's final-norm output in the compute dtype (shared by hidden_states and __call__)."""
        h, _ = self.stack(
            self._embed(tokens, inputs_embeds), positions=positions, segment_ids=segment_ids,
            prefix_mask=prefix_mask, dropout_key=self._dropout_key(deterministic, dropout_key),
        )
        return h

    def hidden_states(
        self,
        tokens: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        deterministic: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states [B, T, D] in float32 (what TART mean-pools for embeddings)."""
        return self._final(tokens, inputs_embeds, positions, segment_ids, prefix_mask,
                           deterministic, dropout_key).astype(jnp.float32)

    def logits(self, h: jax.Array) -> jax.Array:
        """LM-head logits [B, T, V] in float32 from hidden states [B, T, D]."""
        dtype = jnp.dtype(self.config.dtype)
        if self.config.tie_embeddings:
            out = self.embed.attend(h)
        else:
            out = dot(h, self.lm_head.get_value(), "btd,dv->btv", dtype, jnp.float32)
        return constrain(out, ("act_batch", "act_len", "act_vocab"))

    def __call__(
        self,
        tokens: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        deterministic: bool = True,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [B, T, V] float32; segment_ids 0 = padding, positions default to arange(T)."""
        return self.logits(self._final(tokens, inputs_embeds, positions, segment_ids, prefix_mask,
                                       deterministic, dropout_key))

    def init_cache(self, batch: int, slots: int, dtype: str | None = None) -> KVCache:
        """An empty KV cache of `slots` token slots (dtype defaults to the compute dtype)."""
        c = self.config
        shape = (c.num_layers, batch, slots, c.num_kv_heads, c.head_dim)
        dtype = jnp.dtype(dtype or c.dtype)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, slots), bool),
                       jnp.zeros((), jnp.int32))

    def extend(
        self,
        tokens: jax.Array,
        cache: KVCache,
        *,
        positions: jax.Array | None = None,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Feeds T more tokens [B, T] through the cache -> (logits [B, T, V] float32, updated cache)."""
        h, cache = self.stack(self.embed(tokens), positions=positions, cache=cache, token_mask=token_mask)
        return self.logits(h), cache
