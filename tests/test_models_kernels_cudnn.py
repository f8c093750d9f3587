"""The cuDNN attention call against the decoder's XLA attention: on CPU through
implementation="xla" (the same arguments cuDNN gets), on a GPU through cuDNN itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symtune.models.attention import _attend_block, attention_mask
from symtune.models.kernels.cudnn import cudnn_attention, cudnn_installed, cudnn_supported

B, T = 2, 256


def packed_segments():
    """Row 0: two segments then padding; row 1: two segments, no padding."""
    ids = np.zeros((B, T), np.int32)
    ids[0, :100], ids[0, 100:200] = 1, 2
    ids[1, :150], ids[1, 150:] = 1, 2
    return jnp.asarray(ids)


def prefix():
    """The first 40 tokens of each row are a bidirectional prefix (PrefixLM)."""
    return jnp.broadcast_to(jnp.arange(T) < 40, (B, T))


CASES = {  # heads, kv_heads, packed, prefix
    "causal_mha": (4, 4, False, False),
    "packed_with_padding": (4, 4, True, False),
    "gqa_packed": (4, 2, True, False),
    "gqa_prefix_lm": (4, 2, False, True),
}


def outputs_and_grads(attention, q, k, v, cotangent, query_mask):
    def loss(q, k, v):
        out = attention(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * cotangent * query_mask[:, :, None, None]), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def inputs(case, head_dim, dtype):
    heads, kv_heads, packed, bidirectional = CASES[case]
    keys = jax.random.split(jax.random.key(head_dim + heads + kv_heads + 2 * packed + 4 * bidirectional), 4)
    q = jax.random.normal(keys[0], (B, T, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (B, T, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (B, T, kv_heads, head_dim), dtype)
    cotangent = jax.random.normal(keys[3], (B, T, heads, head_dim), jnp.float32)
    segment_ids = packed_segments() if packed else None
    mask = attention_mask(segment_ids, prefix() if bidirectional else None, B, T)
    query_mask = ((segment_ids != 0) if packed else jnp.ones((B, T), bool)).astype(jnp.float32)
    return q, k, v, mask, not bidirectional, cotangent, query_mask


def assert_close(got_out, got_grads, want_out, want_grads, query_mask, atol):
    rows = np.asarray(query_mask, bool)
    as_f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    np.testing.assert_allclose(as_f32(got_out)[rows], as_f32(want_out)[rows], atol=atol, rtol=0)
    for name, got, want in zip("qkv", got_grads, want_grads):
        assert bool(jnp.isfinite(got).all()), f"d{name} has non-finite entries"
        np.testing.assert_allclose(as_f32(got), as_f32(want), atol=atol, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", list(CASES))
def test_cudnn_call_through_xla_matches_the_decoders_attention(case, head_dim):
    q, k, v, mask, causal, cotangent, query_mask = inputs(case, head_dim, jnp.float32)
    call = lambda q, k, v: cudnn_attention(q, k, v, mask, causal=causal, implementation="xla")  # noqa: E731
    reference = lambda q, k, v: _attend_block(q, k, v, mask)  # noqa: E731
    got = outputs_and_grads(call, q, k, v, cotangent, query_mask)
    want = outputs_and_grads(reference, q, k, v, cotangent, query_mask)
    assert got[0].shape == q.shape
    assert_close(*got, *want, query_mask, atol=1e-5)


def test_cudnn_supported_explains_what_it_cannot_take():
    if not cudnn_installed():
        assert "not installed" in cudnn_supported((2, 256, 4, 64), (2, 256, 2, 64), jnp.bfloat16)
        return
    assert cudnn_supported((2, 256, 4, 64), (2, 256, 2, 64), jnp.bfloat16) is None
    assert "not float32" in cudnn_supported((2, 256, 4, 64), (2, 256, 2, 64), jnp.float32)
    assert "multiples of 8 up to 128" in cudnn_supported((2, 256, 4, 60), (2, 256, 2, 60), jnp.bfloat16)
    assert "even sequence lengths" in cudnn_supported((2, 255, 4, 64), (2, 255, 2, 64), jnp.bfloat16)
    assert "multiple of key/value heads" in cudnn_supported((2, 256, 6, 64), (2, 256, 4, 64), jnp.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_cudnn_on_a_gpu_matches_the_decoders_attention(case):
    q, k, v, mask, causal, cotangent, query_mask = inputs(case, 128, jnp.bfloat16)
    call = lambda q, k, v: cudnn_attention(q, k, v, mask, causal=causal)  # noqa: E731
    reference = lambda q, k, v: _attend_block(q.astype(jnp.float32), k.astype(jnp.float32),  # noqa: E731
                                              v.astype(jnp.float32), mask)
    got = outputs_and_grads(call, q, k, v, cotangent, query_mask)
    want = outputs_and_grads(reference, q, k, v, cotangent, query_mask)
    assert "cudnn" in jax.jit(call).lower(q, k, v).compile().as_text().lower()
    assert_close(*got, *want, query_mask, atol=3e-2)  # bfloat16 inputs, float32 reference
