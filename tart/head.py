"""The TART reasoning head: a GPT-2-style `DecoderStack` from symtune.models over (x, y) tokens.

A sequence of k examples is 2k tokens x1, y1, …, xk, yk sent through one input projection; the
stack adds learned positions; the readout maps each x token's state to one logit, the prediction
of that example's label from the examples before it. Two token layouts (`HeadConfig.tokens`):

  "paper"   the released head's: both kinds `dims` wide, y tokens (y, 0, …, 0) with y in {0, 1}
  "paired"  `dims + 1` wide: x tokens (x, 0), y tokens (x, 2y - 1). A y token already holds its
            example, so the head need not first learn to pair each label with the input before
            it, which is most of the paper layout's long initial plateau on small heads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from symtune.errors import UserError
from symtune.models.config import DecoderConfig
from symtune.models.decoder import DecoderStack
from symtune.models.layers import add_bias, dot, mesh_is_set, param


TOKEN_LAYOUTS = ("paper", "paired")


@gin.configurable
@dataclass(frozen=True)
class HeadConfig:
    """Shape of the head; the Transformer itself is a GPT-2 `DecoderConfig` derived from it."""

    num_layers: int = 12
    width: int = 256
    num_heads: int = 8
    dims: int = 16
    max_examples: int = 258
    dtype: str = "float32"  # compute dtype; bfloat16 on accelerators
    remat_policy: str = "none"
    attention: str = "auto"  # DecoderConfig.attention: "auto" (fused kernel on one CPU device) or "xla"
    init_std: float = 0.02  # GPT-2's; a larger one shortens the initial loss plateau of small heads
    tokens: str = "paper"  # "paper" or "paired" (see the module docstring)

    def __post_init__(self):
        if self.tokens not in TOKEN_LAYOUTS:
            raise UserError(f"unknown TART token layout {self.tokens!r}; choose from {', '.join(TOKEN_LAYOUTS)}")

    @property
    def token_dims(self) -> int:
        """Width of a token before the input projection."""
        return self.dims + (self.tokens == "paired")

    def decoder(self) -> DecoderConfig:
        """The GPT-2 block stack: layernorm, gelu_tanh, learned positions over 2 tokens per example."""
        if self.width % self.num_heads:
            raise UserError(f"head width {self.width} is not divisible by num_heads {self.num_heads}")
        return DecoderConfig(
            family="gpt2", vocab_size=1, num_layers=self.num_layers, embed_dim=self.width,
            num_heads=self.num_heads, num_kv_heads=self.num_heads, head_dim=self.width // self.num_heads,
            mlp_dim=4 * self.width, norm="layernorm", activation="gelu_tanh", gated_mlp=False,
            position="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
            max_positions=2 * self.max_examples, dtype=self.dtype, remat_policy=self.remat_policy,
            attention=self.attention, init_std=self.init_std, causal_block=128,
        )


HEAD_PRESETS: dict[str, HeadConfig] = {
    # The paper's head: 12 layers, 8 heads, width 256, up to 258 examples.
    "tart-paper": HeadConfig(),
    # Trains on a 2-core CPU in under an hour (see configs/runs/tart_cpu.gin); 2 heads of 32 run
    # 1.3x faster than 4 of 16 on CPU, where attention's softmax dominates at this width.
    "tart-cpu": HeadConfig(num_layers=4, width=64, num_heads=2, max_examples=130, init_std=0.1, tokens="paired"),
}


@gin.configurable
def head_config(preset: str = "tart-cpu", overrides: dict | None = None) -> HeadConfig:
    """A named head preset with optional field overrides (the gin entry point)."""
    if preset not in HEAD_PRESETS:
        raise UserError(f"unknown TART head preset {preset!r}; choose from {', '.join(HEAD_PRESETS)}")
    unknown = set(overrides or {}) - {f.name for f in fields(HeadConfig)}
    if unknown:
        raise UserError(f"HeadConfig has no field(s) {', '.join(sorted(unknown))}")
    return replace(HEAD_PRESETS[preset], **(overrides or {}))


def interleave(xs: jax.Array, ys: jax.Array, layout: str = "paper") -> jax.Array:
    """xs [B, n, d] and ys [B, n] -> tokens [B, 2n, d] ("paper") or [B, 2n, d + 1] ("paired")."""
    ys = ys.astype(xs.dtype)
    if layout == "paper":
        x_tokens, y_tokens = xs, jnp.zeros_like(xs).at[..., 0].set(ys)
    else:
        x_tokens = jnp.concatenate([xs, jnp.zeros_like(xs[..., :1])], axis=-1)
        y_tokens = jnp.concatenate([xs, (2 * ys - 1)[..., None]], axis=-1)
    b, n, d = x_tokens.shape
    return jnp.stack([x_tokens, y_tokens], axis=2).reshape(b, 2 * n, d)


class TartHead(nnx.Module):
    """Input projection → GPT-2 DecoderStack → one logit per x token."""

    def __init__(self, config: HeadConfig, *, rngs: nnx.Rngs):
        self.config = config
        decoder = config.decoder()
        init = nnx.initializers.normal(decoder.init_std)
        zeros = nnx.initializers.zeros
        with nnx.use_eager_sharding(mesh_is_set()):
            self.read_in = param(rngs, init, (config.token_dims, config.width), (None, "embed"), jnp.float32)
            self.read_in_bias = param(rngs, zeros, (config.width,), ("embed",), jnp.float32)
            self.stack = DecoderStack(decoder, rngs=rngs)
            self.read_out = param(rngs, init, (config.width, 1), ("embed", None), jnp.float32)
            self.read_out_bias = param(rngs, zeros, (1,), (None,), jnp.float32)

    def __call__(self, xs: jax.Array, ys: jax.Array) -> jax.Array:
        """xs [B, n, dims], ys [B, n] in {0, 1} -> logits [B, n] of y_i given the examples before i."""
        if xs.shape[1] > self.config.max_examples:
            raise UserError(f"{xs.shape[1]} examples exceed this head's {self.config.max_examples}; "
                            "use fewer in-context examples or a head trained for more")
        dtype = jnp.dtype(self.config.dtype)
        tokens = dot(interleave(xs, ys, self.config.tokens), self.read_in.get_value(), "btd,de->bte", dtype)
        h, _ = self.stack(add_bias(tokens, self.read_in_bias))
        logits = dot(h[:, ::2], self.read_out.get_value(), "bte,eo->bto", dtype, jnp.float32)
        return logits[..., 0] + self.read_out_bias.get_value()[0]


@nnx.jit
def sequence_probs(head: TartHead, xs, ys):
    """P(y_i = 1 | examples before i) [B, n] for whole sequences xs [B, n, d], ys [B, n]."""
    return jax.nn.sigmoid(head(xs, ys))


@nnx.jit
def _query_probs(head: TartHead, train_x, train_y, queries):
    t, k = queries.shape[0], train_x.shape[0]
    xs = jnp.concatenate([jnp.broadcast_to(train_x, (t, *train_x.shape)), queries[:, None]], 1)
    ys = jnp.concatenate([jnp.broadcast_to(train_y, (t, k)), jnp.zeros((t, 1))], 1)
    return jax.nn.sigmoid(head(xs, ys)[:, k])


def predict_queries(head: TartHead, train_x, train_y, test_x, batch_size: int = 64) -> np.ndarray:
    """P(y = 1) of each query in `test_x` [T, d] after the k examples (train_x [k, d], train_y [k])."""
    train_x, train_y = jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.float32)
    test_x = np.asarray(test_x, np.float32)
    padded = np.concatenate([test_x, np.zeros((-len(test_x) % batch_size, test_x.shape[1]), np.float32)])
    out = [_query_probs(head, train_x, train_y, jnp.asarray(padded[i:i + batch_size]))
           for i in range(0, len(padded), batch_size)]
    return np.concatenate([np.asarray(o) for o in out])[:len(test_x)]
