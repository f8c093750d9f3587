"""DecoderConfig: every architectural and numerical choice of the decoder, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from symtune.errors import UserError

FAMILIES = ("llama", "gpt_neox", "gpt2")
NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
POSITIONS = ("rope", "learned")
# Named by what the backward pass keeps of each block: everything (none: no rematerialisation),
# the weight matmuls' outputs (q/k/v/o and MLP projections; never attention's score-sized
# products), or only the block's input.
REMAT_POLICIES = ("none", "save_projections", "save_nothing")
RENAMED_REMAT_POLICIES = {
    "full": "save_nothing",
    "dots_no_batch": "save_projections",
    "dots": "save_projections",  # 'dots' also kept attention's score-sized products
}
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("auto", "xla", "splash", "cudnn")


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only Transformer; `family` names the Hugging Face layout, the other fields the maths.

    Llama family: rmsnorm, silu + gated_mlp, rope (optionally with Llama-3 frequency scaling),
    num_kv_heads < num_heads for grouped-query attention, qkv_bias for Qwen2.
    GPT-NeoX/Pythia: layernorm, gelu, rope with rotary_fraction 0.25, parallel_residual, biases.
    GPT-2: layernorm, gelu_tanh, learned positions, biases, tied embeddings.
    """

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    family: str = "llama"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "silu"
    gated_mlp: bool = True
    position: str = "rope"
    rotary_fraction: float = 1.0
    rope_base: float = 10000.0
    # Llama-3 ("llama3" rope_type) frequency scaling; None = plain RoPE.
    rope_llama3_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    parallel_residual: bool = False
    max_positions: int = 2048
    dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = True
    # Query block of XLA's causal attention (the fused CPU kernel reads its key ranges from the
    # mask instead): key blocks above the diagonal are skipped (a quarter of the
    # score FLOPs at T=512, approaching half for long sequences). Smaller blocks skip more but run
    # smaller matmuls: 256 is fastest for pythia-70m at T=512 on CPU, 128 for the TART head
    # (32 x 8 heads of width 32 at T=516), whose scores are 16x larger.
    causal_block: int = 256
    # "auto": Pallas splash attention on TPU (models/kernels/splash.py), cuDNN flash attention on GPU
    # in bfloat16/float16 (models/kernels/cudnn.py), the fused C++ kernel of models/cpu_attention.py
    # on one CPU device in float32, XLA's einsums elsewhere, for PrefixLM rows on TPU and when
    # decoding through a KV cache (models.attention.attention_kernel); "splash", "cudnn", "xla": that one.
    attention: str = "auto"

    def __post_init__(self):
        if self.remat_policy in RENAMED_REMAT_POLICIES:
            raise UserError(f"DecoderConfig.remat_policy={self.remat_policy!r} is now "
                            f"{RENAMED_REMAT_POLICIES[self.remat_policy]!r} (policies are named by what they save: "
                            f"{', '.join(REMAT_POLICIES)})")
        for field, allowed in (
            ("family", FAMILIES), ("norm", NORMS), ("activation", ACTIVATIONS),
            ("position", POSITIONS), ("remat_policy", REMAT_POLICIES),
            ("dtype", DTYPES), ("param_dtype", DTYPES), ("attention", ATTENTION),
        ):
            if getattr(self, field) not in allowed:
                raise UserError(
                    f"DecoderConfig.{field}={getattr(self, field)!r}; choose from {', '.join(allowed)}"
                )
        sizes = ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "max_positions", "causal_block")
        for field in sizes:
            if getattr(self, field) <= 0:
                raise UserError(f"DecoderConfig.{field} must be positive (got {getattr(self, field)})")
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"DecoderConfig: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"DecoderConfig.dropout_rate must be in [0, 1) (got {self.dropout_rate})")
        if self.position == "rope" and (self.rotary_dim <= 0 or self.rotary_dim % 2):
            raise UserError(
                f"DecoderConfig: rotary_fraction={self.rotary_fraction} of head_dim={self.head_dim} "
                f"gives {self.rotary_dim} rotary dims; it must be a positive even number"
            )

    @property
    def rotary_dim(self) -> int:
        """Leading dimensions of each head that RoPE rotates (GPT-NeoX rotates a fraction)."""
        return int(self.head_dim * self.rotary_fraction) if self.position == "rope" else 0

    def replace(self, **changes) -> DecoderConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"DecoderConfig has no field(s) {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)
