"""Flash attention on NVIDIA GPUs through cuDNN, as `jax.nn.dot_product_attention` ships it.

The decoder's mask (causal, within packed segments, bidirectional on a PrefixLM prefix) goes to
cuDNN as an additive bias [B, 1, T, S] in the compute dtype: one T x S plane per row, shared by
all heads, never a score array per head. With `causal`, cuDNN also skips the key blocks above the
diagonal. The kernel keeps only the output and the softmax statistics for its backward pass.
jax also has a packed-segment (THD) cuDNN call, but it is private, traces only with a Hopper GPU
attached (so it cannot compile deviceless for a target) and keeps statistics per segment slot.

`implementation="xla"` runs the same call through XLA's einsums on any backend: the tests check
the arguments given to cuDNN on CPU that way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DTYPES = ("bfloat16", "float16")
MAX_HEAD_DIM = 128  # cuDNN's bound before Hopper, and the one jax applies when tracing off the GPU


def cudnn_installed() -> bool:
    """Whether jax finds the cuDNN library (GPU hosts get it with jax[cuda12]; deviceless compiles
    for a GPU target with the `aot` extra)."""
    try:
        from jax._src.lib import cuda_versions  # what jax's own cuDNN check reads
        return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
    except Exception:  # the plugin is absent, or present without the library
        return False


def cudnn_supported(q_shape: Sequence[int], k_shape: Sequence[int], dtype) -> str | None:
    """None when q [B, T, H, D] and k/v [B, S, K, D] in `dtype` can run through cuDNN, else why not."""
    if not cudnn_installed():
        return "cuDNN is not installed (pip install 'nvidia-cudnn-cu12>=9.8,<10')"
    if jnp.dtype(dtype).name not in DTYPES:
        return f"cuDNN flash attention takes {' or '.join(DTYPES)}, not {jnp.dtype(dtype).name}"
    (_, length, heads, head_dim), (_, kv_length, kv_heads, kv_head_dim) = q_shape, k_shape
    if head_dim != kv_head_dim or head_dim % 8 or head_dim > MAX_HEAD_DIM:
        return f"cuDNN needs equal q/k head widths, multiples of 8 up to {MAX_HEAD_DIM}, got {head_dim}/{kv_head_dim}"
    if length % 2 or kv_length % 2:
        # Its backward pass with a bias needs even lengths.
        return f"cuDNN needs even sequence lengths with a mask, got T={length}, S={kv_length}"
    if kv_heads < 1 or heads % kv_heads:
        return f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})"
    return None


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, causal: bool,
                    implementation: str = "cudnn") -> jax.Array:
    """softmax(q k^T / sqrt(D) + mask) v: q [B, T, H, D], k/v [B, S, K, D], mask bool [B, T, S].

    `causal` promises the mask allows no key after its query. Rows whose keys are all masked
    (padding) give finite, meaningless outputs.
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], is_causal=causal,
                                        implementation=implementation)
