"""Splash attention (Pallas, interpret mode on CPU) against plain XLA attention: values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symtune.models.kernels.splash import block_size, splash_attention, splash_supported

B, T = 2, 256
BLOCK = 128  # two query and two key blocks: exercises skipped, partial and full causal blocks


def reference_attention(q, k, v, segment_ids):
    """Dense float32 attention: causal, same segment, never onto padding keys."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, precision="highest") / np.sqrt(q.shape[-1])
    length = q.shape[1]
    allowed = jnp.tril(jnp.ones((length, length), bool))[None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        allowed = allowed & same & (segment_ids != 0)[:, None, :]
    scores = jnp.where(allowed[:, None], scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(allowed[:, None], weights, 0.0)  # all-masked padding rows: 0, not NaN
    return jnp.einsum("bhts,bshd->bthd", weights, v, precision="highest")


def packed_segments():
    """Row 0: two segments then padding; row 1: segments crossing the block boundary, no padding."""
    ids = np.zeros((B, T), np.int32)
    ids[0, :100], ids[0, 100:200] = 1, 2
    ids[1, :150], ids[1, 150:] = 1, 2
    return jnp.asarray(ids)


def outputs_and_grads(attention, q, k, v, segment_ids, cotangent, query_mask):
    def loss(q, k, v):
        out = attention(q, k, v, segment_ids)
        return jnp.sum(out * cotangent * query_mask[:, :, None, None]), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


CASES = {
    "causal_mha": (4, 4, False),
    "packed_with_padding": (4, 4, True),
    "gqa_packed": (4, 2, True),
}


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", list(CASES))
def test_splash_matches_xla_attention_values_and_grads(case, head_dim):
    check_splash_against_reference(case, head_dim, interpret=True)


@pytest.mark.tpu
@pytest.mark.parametrize("case", list(CASES))
def test_splash_compiled_on_a_tpu_matches_xla_attention(case):
    # The TPU's matrix unit may take float32 operands in several bfloat16 passes: a looser bound.
    check_splash_against_reference(case, 128, interpret=False, atol=2e-3)


def check_splash_against_reference(case: str, head_dim: int, *, interpret: bool, atol: float = 1e-5) -> None:
    heads, kv_heads, packed = CASES[case]
    keys = jax.random.split(jax.random.key(head_dim + heads + kv_heads + packed), 4)
    q = jax.random.normal(keys[0], (B, T, heads, head_dim), jnp.float32)
    k = jax.random.normal(keys[1], (B, T, kv_heads, head_dim), jnp.float32)
    v = jax.random.normal(keys[2], (B, T, kv_heads, head_dim), jnp.float32)
    cotangent = jax.random.normal(keys[3], (B, T, heads, head_dim), jnp.float32)
    segment_ids = packed_segments() if packed else None
    query_mask = (segment_ids != 0) if packed else jnp.ones((B, T), bool)
    query_mask = query_mask.astype(jnp.float32)

    kernel = lambda q, k, v, s: splash_attention(q, k, v, s, interpret=interpret, block=BLOCK)  # noqa: E731
    out, grads = outputs_and_grads(kernel, q, k, v, segment_ids, cotangent, query_mask)
    want_out, want_grads = outputs_and_grads(reference_attention, q, k, v, segment_ids, cotangent, query_mask)

    assert out.shape == q.shape and out.dtype == q.dtype
    assert bool(jnp.isfinite(out).all())
    rows = np.asarray(query_mask, bool)
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(want_out)[rows], atol=atol, rtol=0)
    for name, got, want in zip("qkv", grads, want_grads):
        assert bool(jnp.isfinite(got).all()), f"d{name} has non-finite entries"
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=atol, rtol=0, err_msg=f"d{name}")


def test_splash_supported_explains_unrunnable_shapes():
    assert splash_supported((2, 256, 4, 64), (2, 256, 2, 64)) is None
    assert "multiples of 128" in splash_supported((2, 100, 4, 64), (2, 100, 4, 64))
    assert "multiple of key/value heads" in splash_supported((2, 256, 3, 64), (2, 256, 2, 64))


def test_splash_attention_rejects_lengths_off_the_lane_width():
    x = jnp.zeros((1, 100, 2, 64))
    with pytest.raises(ValueError, match="multiples of 128"):
        splash_attention(x, x, x, None, interpret=True)


def test_block_size_is_the_largest_power_of_two_dividing_the_length():
    assert block_size(256, 512) == 256
    assert block_size(384, 512) == 128
    assert block_size(2048, 512) == 512
    assert block_size(1536, 1024) == 512
    assert block_size(256, 64) == 128  # the kernel's floor
